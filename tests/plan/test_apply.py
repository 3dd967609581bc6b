"""Tests of ``freezetune.apply`` on a tiny real model (8x8 inputs, CPU, ms each)."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn as nn

from freezetune.plan import (
    FreezePlan,
    apply_plan,
    describe,
    is_pinned_eval,
    pin_eval,
    plan_from_config,
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
    return plan_from_config(describe(model), preset, raw_rules, batchnorm)


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
    assert p.bn_eval == ("1",)
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
    model.train()
    model(batch()).square().mean().backward()
    opt.step()
    after = dict(model.named_parameters())
    assert [n for n in before if torch.equal(before[n], after[n])] == until_3.frozen
    assert [n for n in before if not torch.equal(before[n], after[n])] == until_3.trainable
