"""Mixed precision, channels_last, gradient accumulation, clipping, label smoothing and
the optimizers, in real runs on the CPU."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from freezetune.config import from_dict
from freezetune.train import Interrupted, StopRequest, make_optimizer, prepare_model, run
from freezetune.train.loop import LoopOptions, steps_in, train_one_epoch
from freezetune.utils import precision_problem


# Not conftest's tiny run: any arch (own models freeze until:body), 4 classes, 48 images, and every
# BatchNorm in eval, so that how a batch is split or accumulated cannot change the result.
def config(tmp: Path, name: str, arch: str = "resnet18", **train: Any) -> Any:
    data = train.pop("data", {})
    freeze = {"preset": "until:layer3"} if arch == "resnet18" else {"preset": "until:body"}
    return from_dict(
        {
            "name": name,
            "seed": 3,
            "model": {"arch": arch, "num_classes": 4},
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 48, "val_samples": 16}
            | data,
            # Every BatchNorm in eval: no batch statistics, so how the batch is split cannot matter.
            "freeze": freeze | {"batchnorm": "eval_all"},
            "train": {"epochs": 1, "output_dir": str(tmp / name), "optimizer": {"lr": 0.05}, **train},
        }
    )


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["model"]


def test_accumulating_four_batches_trains_as_one_four_times_larger(tmp_path: Path) -> None:
    # 9 batches of 8 = steps of 4 + 4 + 1 batches, against batches of 32, 32 and 8: the same samples per step.
    small = run(config(tmp_path, "acc", accumulate=4, data={"train_samples": 72})).summary
    large = run(config(tmp_path, "big", data={"batch_size": 32, "train_samples": 72})).summary
    assert small.epochs == large.epochs == 1
    a, b = weights(tmp_path / "acc"), weights(tmp_path / "big")
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-5, worst
    assert small.speed["accumulate"] == 4
    assert steps_in(9, 4) == 3 and steps_in(8, 4) == 2 and steps_in(9, 4, max_steps=2) == 2


def test_bf16_trains_evaluates_and_records_its_precision(tmp_path: Path) -> None:
    summary = run(config(tmp_path, "bf16", precision="bf16", channels_last=True, epochs=2)).summary
    assert summary.frozen_unchanged and math.isfinite(summary.final_val_loss)
    assert summary.speed["precision"] == "bf16" and summary.speed["channels_last"] is True
    fp32 = run(config(tmp_path, "fp32", epochs=2)).summary
    a, b = weights(tmp_path / "bf16"), weights(tmp_path / "fp32")
    assert all(a[k].dtype == torch.float32 for k in a if a[k].is_floating_point())  # autocast: fp32 masters
    moved = max((a[k] - b[k]).abs().max().item() for k in a if k.startswith("fc."))
    assert 0 < moved < 0.05  # bf16 rounding changes the result a little, not its course
    assert abs(summary.final_val_loss - fp32.final_val_loss) < 0.1


def test_fp16_scales_the_loss_and_resumes_bitwise_with_its_scale(
    tmp_path: Path, user_models: str, stop_after: Callable[[int], StopRequest]
) -> None:
    # A small convnet of the tests' own (tests/conftest.py): fp16 convolutions are emulated, slowly, on a CPU.
    arch = f"{user_models}.nets:build"
    ref = run(config(tmp_path, "ref", arch, precision="fp16", epochs=2)).summary
    cfg = config(tmp_path, "cut", arch, precision="fp16", epochs=2)
    assert isinstance(run(cfg, stop=stop_after(4)), Interrupted)
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the GradScaler's state travels with the checkpoint
    done = run(cfg, resume=tmp_path / "cut").summary
    assert done.final_val_loss == ref.final_val_loss
    a, b = weights(tmp_path / "cut"), weights(tmp_path / "ref")
    assert all(torch.equal(a[k], b[k]) for k in a)


def tiny() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2) * 100, torch.randint(0, 3, (4,))) for _ in range(2)]
    return model, batches


def test_clipping_bounds_the_gradient_norm_of_each_step() -> None:
    model, batches = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, opt, batches, torch.device("cpu"), LoopOptions(clip_grad_norm=1e-3, max_steps=1))
    moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert moved.norm().item() == pytest.approx(1e-3, rel=1e-4)  # lr 1 x a gradient clipped to norm 1e-3


def test_label_smoothing_is_in_the_training_loss_only() -> None:
    model, batches = tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    stats = train_one_epoch(model, opt, batches[:1], torch.device("cpu"), LoopOptions(label_smoothing=0.2))
    x, y = batches[0]
    expected = F.cross_entropy(model(x), y, label_smoothing=0.2).item()
    assert stats.loss == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "optimizer, kind, check",
    [
        ({"name": "sgd", "nesterov": True}, torch.optim.SGD, {"nesterov": True, "momentum": 0.9}),
        ({"name": "adam", "betas": [0.8, 0.99], "eps": 1e-6}, torch.optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-6}),
        ({"name": "adamw", "weight_decay": 0.05}, torch.optim.AdamW, {"betas": (0.9, 0.999), "weight_decay": 0.05}),
    ],
)
def test_the_optimizers_users_expect(optimizer: dict, kind: type, check: dict) -> None:
    cfg = from_dict({"name": "o", "train": {"optimizer": optimizer}})
    opt = make_optimizer(prepare_model(cfg).model, cfg.train.optimizer)
    assert type(opt) is kind and all(opt.defaults[k] == v for k, v in check.items())


@pytest.mark.parametrize(
    "train, words",
    [
        ({"optimizer": {"name": "adamw", "nesterov": True}}, "train.optimizer.nesterov: only for sgd"),
        ({"optimizer": {"nesterov": True, "momentum": 0}}, "train.optimizer.nesterov: needs train.optimizer.momentum"),
        ({"optimizer": {"name": "adam", "betas": [0.9]}}, "train.optimizer.betas: [0.9] must be two numbers"),
        ({"precision": "fp8"}, "train.precision: 'fp8' is not one of fp32, bf16, fp16"),
        ({"accumulate": 0}, "train.accumulate: 0 must be >= 1"),
        ({"clip_grad_norm": 0}, "train.clip_grad_norm: 0.0 must be > 0.0"),
        ({"log": ["wandb"]}, "train.log: ['wandb'] not among jsonl, csv, tensorboard"),
    ],
)
def test_bad_training_keys_are_config_errors(train: dict, words: str) -> None:
    with pytest.raises(Exception) as err:
        from_dict({"name": "o", "train": train})
    assert words in str(err.value)


def test_a_precision_the_device_cannot_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert precision_problem(torch.device("cpu"), "bf16") is None
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    assert precision_problem(torch.device("cpu"), "bf16") == (
        "train.precision: bf16 needs autocast, which torch does not offer on cpu"
    )
