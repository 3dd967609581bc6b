"""The training loop: frozen means bitwise unchanged, backward reaches only the
trainable parameters, evaluation holds no autograd state."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from freezetune.config import OptimizerConfig, Rule
from freezetune.plan import apply_plan, build_plan, describe, plan_from_config, trainable_parameters
from freezetune.record import ledger_tensors_of
from freezetune.train import Diverged, LoopOptions, evaluate, make_optimizer, train_one_epoch
from freezetune.train.loop import epoch_divergence, nonfinite_buffers

CPU = torch.device("cpu")


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),  # 0-2: frozen below
        nn.Conv2d(4, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),  # 3-5: trainable
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def loader(n: int = 32, size: int = 8, classes: int = 3) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=g)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("opt", [OptimizerConfig("sgd", 0.1, 0.9, 0.1), OptimizerConfig("adamw", 0.01, 0.0, 0.1)])
def test_frozen_tensors_are_bitwise_unchanged_with_momentum_and_weight_decay(opt: OptimizerConfig) -> None:
    model = tiny_cnn()
    plan = build_plan(describe(model), [Rule("until", "3", "test")])
    apply_plan(model, plan)
    before = snapshot(model)
    optimizer = make_optimizer(model, opt)
    for _ in range(3):
        train_one_epoch(model, optimizer, loader(), CPU)
        for name, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, name  # backward never reached it
    after = model.state_dict()
    frozen = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    # ...while everything trainable moved, and the unpinned BatchNorm kept learning statistics.
    for key in ["3.weight", "3.bias", "4.weight", "4.bias", "8.weight", "8.bias", "4.running_mean", "4.running_var"]:
        assert not torch.equal(after[key], before[key]), key
    assert after["4.num_batches_tracked"].item() == 12 and after["1.num_batches_tracked"].item() == 0


def test_batchnorm_train_policy_lets_frozen_statistics_move_but_not_weights() -> None:
    model = tiny_cnn()
    plan = build_plan(describe(model), [Rule("until", "3", "test")], batchnorm="train")
    apply_plan(model, plan)
    before = snapshot(model)
    train_one_epoch(model, make_optimizer(model, OptimizerConfig()), loader(), CPU)
    after = model.state_dict()
    assert torch.equal(after["1.weight"], before["1.weight"]) and torch.equal(after["0.weight"], before["0.weight"])
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])  # the user asked for it


def test_optimizer_holds_exactly_the_trainable_parameters_by_identity() -> None:
    model = tiny_cnn()
    apply_plan(model, build_plan(describe(model), [Rule("until", "3", "test")]))
    optimizer = make_optimizer(model, OptimizerConfig())
    held = [id(p) for g in optimizer.param_groups for p in g["params"]]
    expected = [id(p) for n, p in model.named_parameters() if not n.startswith(("0.", "1."))]
    assert held == expected and len(held) == 6
    assert [id(p) for p in trainable_parameters(model)] == expected


def test_optimizer_refuses_a_model_with_nothing_trainable() -> None:
    model = tiny_cnn().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to optimize"):
        make_optimizer(model, OptimizerConfig())


def test_train_one_epoch_returns_plain_numbers_and_respects_max_steps() -> None:
    model = tiny_cnn()
    stats = train_one_epoch(
        model, make_optimizer(model, OptimizerConfig()), loader(n=40), CPU, LoopOptions(max_steps=2)
    )
    loss, seen, steps = stats.loss, stats.samples, stats.steps
    assert type(loss) is float and loss > 0
    assert (seen, steps) == (16, 2)


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_runs_in_inference_mode_in_eval_and_restores_the_mode(start_training: bool) -> None:
    model = tiny_cnn()
    model.train(start_training)
    seen = []
    model[8].register_forward_hook(
        lambda m, i, o: seen.append((torch.is_inference_mode_enabled(), o.requires_grad, o.grad_fn, m.training))
    )
    loss, acc = evaluate(model, loader(n=10), CPU)
    assert seen and all(s == (True, False, None, False) for s in seen)
    assert model.training is start_training
    assert type(loss) is float and 0.0 <= acc <= 1.0


def test_evaluate_times_each_batch_it_runs_when_asked() -> None:
    timed: list[tuple[float, int]] = []
    evaluate(tiny_cnn(), loader(n=10), CPU, timed=timed)
    assert [n for _, n in timed] == [len(y) for _, y in loader(n=10)]
    assert all(s > 0 for s, _ in timed)


def test_evaluate_accuracy_is_exact() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([0, 1, 1, 1])  # the third one is wrong
    _, acc = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3), CPU)
    assert acc == 0.75


def test_resnet18_until_layer3_trains_only_layer3_onwards() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    plan = plan_from_config(describe(model), "until:layer3", [], "eval")
    apply_plan(model, plan)
    protected = {k: v.detach().clone() for k, v in ledger_tensors_of(model, plan).items()}
    before = snapshot(model)
    optimizer = make_optimizer(model, OptimizerConfig("sgd", 0.05, 0.9, 5e-4))
    train_one_epoch(model, optimizer, loader(n=16, size=32), CPU)
    now = dict(model.named_parameters()) | dict(model.named_buffers())
    assert len(protected) == 30 + 3 * 10  # frozen params + 3 buffers for each of 10 pinned BatchNorms
    for key, value in protected.items():
        assert torch.equal(now[key], value), key
    assert not torch.equal(model.layer3[0].conv1.weight, before["layer3.0.conv1.weight"])
    assert all(
        p.grad is None for n, p in model.named_parameters() if n.startswith(("conv1", "bn1", "layer1", "layer2"))
    )
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith(("layer3", "layer4", "fc")))


def test_non_finite_weights_are_refused_only_where_they_train() -> None:
    model = tiny_cnn()
    model[0].requires_grad_(False)
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")  # frozen: never stepped, not this check's business
    assert epoch_divergence(model, 3, None, 0.5) is None
    with torch.no_grad():
        model[8].bias[1] = float("inf")
    diverged = epoch_divergence(model, 3, None, 0.5)
    assert isinstance(diverged, Diverged)
    assert (diverged.what, diverged.epoch, diverged.last_finite, diverged.step) == ("weights", 3, 0.5, None)
    assert diverged.detail == "8.bias" and "non-finite weights (8.bias) in epoch 3" in str(diverged)


def test_non_finite_running_statistics_are_refused_unless_the_ledger_protects_them() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model[4].running_var[2] = float("inf")
    diverged = epoch_divergence(model, 2, None, None)
    assert isinstance(diverged, Diverged) and diverged.detail == "4.running_var"
    assert str(diverged).startswith("training diverged: non-finite BatchNorm running statistics (4.running_var) in")
    # A pinned BatchNorm's buffers are the ledger's (verified bitwise unchanged), not checked twice.
    assert epoch_divergence(model, 2, None, None, skip={"4.running_mean", "4.running_var"}) is None


@pytest.mark.parametrize(
    ("train_loss", "val_loss", "what", "last"),
    [(2.3e15, float("nan"), "validation loss", 2.3e15), (float("inf"), 1.0, "training loss", 0.5)],
)
def test_a_non_finite_epoch_loss_is_divergence_with_finite_weights(
    train_loss: float, val_loss: float, what: str, last: float
) -> None:
    from freezetune.record import EpochResult

    result = EpochResult(4, train_loss, val_loss, 0.25, 1.0, 8.0, 2)
    assert epoch_divergence(tiny_cnn(), 4, EpochResult(4, 1.0, 1.0, 0.25, 1.0, 8.0, 2), 0.5) is None
    diverged = epoch_divergence(tiny_cnn(), 4, result, 0.5)
    assert isinstance(diverged, Diverged)
    assert (diverged.what, diverged.epoch, diverged.last_finite) == (what, 4, last)
    assert f"non-finite {what} ({train_loss if what == 'training loss' else val_loss}) in epoch 4" in str(diverged)


def test_a_buffer_non_finite_before_training_is_the_models_design_not_a_divergence() -> None:
    model = tiny_cnn()
    model.register_buffer("mask", torch.tensor([0.0, float("-inf")]))  # as an attention mask holds
    by_design = nonfinite_buffers(model)
    assert by_design == {"mask"}
    assert epoch_divergence(model, 1, None, None, skip=by_design) is None
    with torch.no_grad():
        model[1].running_mean[0] = float("nan")  # a statistic that went NaN in training is still caught
    diverged = epoch_divergence(model, 1, None, None, skip=by_design)
    assert diverged is not None and diverged.detail == "1.running_mean"
