"""Tests of ``freezetune.apply`` on a tiny real model (8x8 inputs, CPU, ms each)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn

from freezetune.config import RULES, read_records
from freezetune.plan import (
    FreezePlan,
    apply_plan,
    describe,
    is_pinned_eval,
    pin_eval,
    plan_from_config,
    stored_dtypes,
    trainable_parameters,
    unpin_eval,
)


def tiny_model() -> nn.Sequential:
    """0 Conv, 1 BN, 2 ReLU, 3 Conv, 4 BN, 5 ReLU, 6 Flatten, 7 Linear; 8x8 -> 8x8 -> 6x6."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )


def make_plan(model: nn.Module, raw_rules: list, preset: str | None = None, batchnorm: str = "eval") -> FreezePlan:
    return plan_from_config(describe(model), preset, read_records(RULES, raw_rules, "freeze.rules"), batchnorm)


def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, 8, 8, generator=g) * 3 + 1  # far from the initial running stats (0, 1)


def bn_state(bn: nn.BatchNorm2d) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in bn.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def model() -> nn.Sequential:
    return tiny_model()


@pytest.fixture
def until_3(model: nn.Sequential) -> FreezePlan:
    """First conv + BN frozen (BN "1" pinned); second BN ("4") trainable."""
    p = make_plan(model, [{"until": "3"}])
    assert p.pinned_bn == ("1",)
    apply_plan(model, p)
    return p


# --------------------------------------------------------------------------- requires_grad


def test_apply_sets_requires_grad_exactly_per_plan(model: nn.Sequential, until_3: FreezePlan) -> None:
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {
        "0.weight": False,
        "0.bias": False,
        "1.weight": False,
        "1.bias": False,
        "3.weight": True,
        "3.bias": True,
        "4.weight": True,
        "4.bias": True,
        "7.weight": True,
        "7.bias": True,
    }
    assert {n: p.requires_grad for n, p in model.named_parameters()} == {d.name: d.trainable for d in until_3.params}


def test_frozen_parameters_get_no_grad_and_trainable_ones_do(model: nn.Sequential, until_3: FreezePlan) -> None:
    model.train()
    model(batch()).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert [n for n, g in grads.items() if g is None] == until_3.frozen
    assert [n for n, g in grads.items() if g is not None] == until_3.trainable


def test_reapplying_a_plan_can_unfreeze(model: nn.Sequential, until_3: FreezePlan) -> None:
    apply_plan(model, make_plan(model, [], preset="full"))
    assert all(p.requires_grad for p in model.parameters())
    assert not is_pinned_eval(model[1])
    model.train()
    assert model[1].training


def test_linear_probe_pins_every_batchnorm(model: nn.Sequential) -> None:
    apply_plan(model, make_plan(model, [], preset="linear_probe"))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["7.weight", "7.bias"]
    assert [n for n, m in model.named_modules() if is_pinned_eval(m)] == ["1", "4"]


def test_batchnorm_train_pins_nothing(model: nn.Sequential) -> None:
    apply_plan(model, make_plan(model, [], preset="linear_probe", batchnorm="train"))
    assert [n for n, m in model.named_modules() if is_pinned_eval(m)] == []
    model.train()
    assert model[1].training and model[4].training


# --------------------------------------------------------------------------- pinned BatchNorm


def test_pinned_batchnorm_survives_repeated_train_calls(model: nn.Sequential, until_3: FreezePlan) -> None:
    assert is_pinned_eval(model[1])
    assert not is_pinned_eval(model[4])
    assert not model[1].training  # pinned at once, before any train()
    for call in (
        lambda: model.train(),
        lambda: model.train(True),
        lambda: model.train(),
        lambda: model.train(mode=True),
    ):
        call()
        assert model.training
        assert not model[1].training
        assert model[4].training
        assert model[0].training and model[7].training  # unpinned modules follow the parent
    model.eval()
    assert [m.training for m in model.modules()] == [False] * 9
    model.train()
    assert not model[1].training and model[4].training


def test_calling_train_on_the_pinned_module_itself_keeps_it_in_eval(model: nn.Sequential, until_3: FreezePlan) -> None:
    assert model[1].train(True) is model[1]
    assert not model[1].training


def test_pinned_running_stats_do_not_change_in_train_mode(model: nn.Sequential, until_3: FreezePlan) -> None:
    model.train()
    pinned_before, free_before = bn_state(model[1]), bn_state(model[4])
    model(batch())
    assert same_state(bn_state(model[1]), pinned_before)
    assert model[1].num_batches_tracked.item() == 0
    free_after = bn_state(model[4])
    assert free_after["num_batches_tracked"].item() == 1
    assert not torch.equal(free_after["running_mean"], free_before["running_mean"])
    assert not torch.equal(free_after["running_var"], free_before["running_var"])


def test_unpin_restores_normal_behaviour(model: nn.Sequential, until_3: FreezePlan) -> None:
    unpin_eval(model[1])
    assert not is_pinned_eval(model[1])
    assert "train" not in vars(model[1])  # the class's own train() is back
    assert not model[1].training  # unpinning alone does not switch modes ...
    model.train()
    assert model[1].training  # ... the next train() does
    before = bn_state(model[1])
    model(batch())
    assert model[1].num_batches_tracked.item() == 1
    assert not torch.equal(model[1].running_mean, before["running_mean"])
    model.eval()
    assert not model[1].training


def test_unpin_of_an_unpinned_module_is_a_no_op(model: nn.Sequential) -> None:
    unpin_eval(model[4])
    unpin_eval(model[4])
    assert not is_pinned_eval(model[4])
    model.train()
    assert model[4].training


def test_pin_twice_then_unpin_once(model: nn.Sequential) -> None:
    pin_eval(model[4])
    pin_eval(model[4])
    model.train()
    assert not model[4].training
    unpin_eval(model[4])
    model.train()
    assert model[4].training


def test_pin_eval_pins_a_whole_subtree(model: nn.Sequential) -> None:
    block = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    outer = nn.Sequential(block, nn.Linear(2, 2))
    pin_eval(block)
    outer.train()
    assert outer.training and outer[1].training
    assert not block.training and not block[0].training and not block[1].training


def test_deepcopy_keeps_the_pin_on_the_copy(model: nn.Sequential, until_3: FreezePlan) -> None:
    clone = copy.deepcopy(model)
    assert is_pinned_eval(clone[1])
    assert not is_pinned_eval(clone[4])
    # The copied override must act on the copy, not on the original module.
    nn.Module.train(clone[1], True)
    clone.train()
    assert not clone[1].training and clone[4].training
    before = bn_state(clone[1])
    clone(batch())
    assert same_state(bn_state(clone[1]), before)
    # The copy and the original are independent.
    unpin_eval(clone[1])
    assert is_pinned_eval(model[1])
    model.train()
    assert not model[1].training
    clone.train()
    assert clone[1].training


def test_pickle_round_trip_keeps_the_pin(model: nn.Sequential, until_3: FreezePlan) -> None:
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert is_pinned_eval(loaded[1])
    loaded.train()
    assert not loaded[1].training and loaded[4].training
    assert not is_pinned_eval(pickle.loads(pickle.dumps(model))[4])


# --------------------------------------------------------------------------- mismatched plans


def test_plan_for_another_model_is_rejected(model: nn.Sequential) -> None:
    other = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2))
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match=r"made for another model: not in the plan \['3.bias', '3.weight'"):
        apply_plan(model, make_plan(other, [{"freeze": "0"}]))
    # Rejected before touching anything: the model is not left half-applied.
    assert [p.requires_grad for p in model.parameters()] == before


def test_plan_naming_parameters_the_model_lacks_is_rejected() -> None:
    small = nn.Sequential(nn.Linear(2, 2))
    big = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"not in the plan \[\], not in the model \['1.bias', '1.weight'\]"):
        apply_plan(small, make_plan(big, [{"freeze": "0"}]))


# --------------------------------------------------------------------------- trainable_parameters


def test_trainable_parameters_is_the_trainable_set_by_identity(model: nn.Sequential, until_3: FreezePlan) -> None:
    params = dict(model.named_parameters())
    got = trainable_parameters(model)
    assert [id(p) for p in got] == [id(params[n]) for n in until_3.trainable]
    assert {id(p) for p in got}.isdisjoint(id(params[n]) for n in until_3.frozen)
    assert all(isinstance(p, nn.Parameter) for p in got)


def test_trainable_parameters_compares_identity_not_value() -> None:
    # Two layers with bitwise-equal weights; only one is trainable.
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    with torch.no_grad():
        model[1].weight.copy_(model[0].weight)
        model[1].bias.copy_(model[0].bias)
    apply_plan(model, make_plan(model, [{"freeze": "0"}]))
    got = trainable_parameters(model)
    assert [id(p) for p in got] == [id(model[1].weight), id(model[1].bias)]


def test_an_optimizer_on_trainable_parameters_changes_only_them(model: nn.Sequential, until_3: FreezePlan) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.1)
    # eval mode: in train mode conv 3's bias feeds BatchNorm 4, which subtracts the batch mean, so
    # its gradient is zero up to rounding and whether SGD moves it depends on the last bit (it did
    # not on torch 2.14's CPU kernels). With running statistics every trainable tensor gets a real one.
    model.eval()
    model(batch()).square().mean().backward()
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in until_3.trainable)
    opt.step()
    after = dict(model.named_parameters())
    assert [n for n in before if torch.equal(before[n], after[n])] == until_3.frozen
    assert [n for n in before if not torch.equal(before[n], after[n])] == until_3.trainable


# --------------------------------------------------------------------------- frozen_dtype

BF16 = torch.bfloat16


def dtypes(model: nn.Module) -> dict[str, torch.dtype]:
    return {n: t.dtype for n, t in model.state_dict().items()}


def test_frozen_dtype_stores_frozen_parameters_low_and_normalisation_layers_in_fp32(model: nn.Sequential) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    plan = make_plan(model, [{"until": "3"}])
    assert stored_dtypes(model, plan, "bf16") == {
        "0.weight": BF16,
        "0.bias": BF16,
        "1.weight": torch.float32,  # BatchNorm: frozen, but kept fp32
        "1.bias": torch.float32,
        **{n: torch.float32 for n in ("3.weight", "3.bias", "4.weight", "4.bias", "7.weight", "7.bias")},
    }
    apply_plan(model, plan, "bf16")
    got = dtypes(model)
    assert got["0.weight"] == got["0.bias"] == BF16
    assert {n for n, d in got.items() if d == BF16} == {"0.weight", "0.bias"}  # buffers never
    assert got["1.num_batches_tracked"] == torch.int64
    # The same Parameter objects, holding the bf16 rounding of the weight.
    assert {n: id(p) for n, p in model.named_parameters()} == ids
    assert torch.equal(model[0].weight, before["0.weight"].to(BF16))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.dtype == torch.float32)


def test_unfreezing_up_casts_in_place_and_freezing_casts_down(model: nn.Sequential) -> None:
    pretrained = model[0].weight.detach().clone()
    weight = model[0].weight
    apply_plan(model, make_plan(model, [{"until": "3"}]), "bf16")
    apply_plan(model, make_plan(model, [], preset="full"), "bf16")  # an unfreeze event
    assert model[0].weight is weight and weight.dtype == torch.float32 and weight.requires_grad
    assert torch.equal(weight, pretrained.to(BF16).float())  # the bf16 rounding, exactly, in fp32
    assert {d for d in dtypes(model).values()} == {torch.float32, torch.int64}
    apply_plan(model, make_plan(model, [{"freeze": "7"}]), "fp16")  # a freeze event
    assert model[7].weight.dtype == model[7].bias.dtype == torch.float16
    apply_plan(model, make_plan(model, [], preset="full"))  # None: a look at a plan leaves dtypes alone
    assert model[7].weight.dtype == torch.float16
    apply_plan(model, make_plan(model, [], preset="full"), "fp32")
    assert model[7].weight.dtype == torch.float32


def test_frozen_dtype_fp32_changes_nothing(model: nn.Sequential) -> None:
    before = {n: t.clone() for n, t in model.state_dict().items()}
    apply_plan(model, make_plan(model, [], preset="linear_probe"), "fp32")
    assert all(t.dtype == before[n].dtype and torch.equal(t, before[n]) for n, t in model.state_dict().items())


@pytest.mark.parametrize(
    "norm", [nn.BatchNorm2d(4), nn.LayerNorm([4, 3, 3]), nn.GroupNorm(2, 4)], ids=lambda m: type(m).__name__
)
def test_normalisation_layers_with_bf16_weights_refuse_fp32_inputs_on_cpu(norm: nn.Module) -> None:
    # Why frozen_dtype keeps them fp32: an fp32 input reaches a norm layer wherever an fp32
    # tensor joins the stream first (ViT's pos_embedding), and autocast does not cast for it.
    x = torch.randn(2, 4, 3, 3)
    with torch.autocast("cpu", dtype=BF16):
        assert norm.eval()(x).dtype == torch.float32  # fp32 weights: fine
        assert norm(x.to(BF16)).dtype == BF16
        norm.to(BF16)
        with pytest.raises(RuntimeError, match="mixed dtype"):
            norm(x)


def _forward_case(arch: str, preset: str, heavy: bool = False) -> pytest.param:
    kwargs = {"image_size": 32} if arch.startswith("vit") else {}  # 4 patches of 16 px
    return pytest.param(arch, kwargs, preset, id=f"{arch}-{preset}", marks=[pytest.mark.heavy] if heavy else [])


# bitfit's backward runs through the whole net (2-3 s each): ViT's, with bf16 Linear weights and
# trainable fp32 biases, is the fast set's; convnext_tiny takes 1.5 s to build.
@pytest.mark.parametrize(
    ("arch", "kwargs", "preset"),
    [
        _forward_case("resnet18", "linear_probe"),
        _forward_case("mobilenet_v3_small", "linear_probe"),
        _forward_case("vit_b_16", "linear_probe"),
        _forward_case("vit_b_16", "bitfit"),
        _forward_case("resnet18", "bitfit", heavy=True),
        _forward_case("mobilenet_v3_small", "bitfit", heavy=True),
        _forward_case("convnext_tiny", "linear_probe", heavy=True),
        _forward_case("convnext_tiny", "bitfit", heavy=True),
    ],
)
def test_a_forward_under_autocast_takes_bf16_frozen_weights(arch: str, kwargs: dict, preset: str) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.get_model(arch, num_classes=3, **kwargs)
    apply_plan(net, make_plan(net, [], preset=preset), "bf16")
    low = [n for n, p in net.named_parameters() if p.dtype == BF16]
    assert low and all(not net.get_parameter(n).requires_grad for n in low)
    x = torch.randn(2, 3, 32, 32)  # two images: a BatchNorm that trains needs more than one value
    with torch.autocast("cpu", dtype=BF16):
        out = net.train()(x)  # pinned modules stay in eval
    out.float().sum().backward()
    assert out.shape == (2, 3) and bool(torch.isfinite(out).all())
    assert all(p.grad is None for p in net.parameters() if not p.requires_grad)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters() if p.requires_grad)
