"""best.pt and early stopping in real runs: the best epoch's weights, a run that stops
itself, and both surviving an interrupt and --resume bitwise."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from freezetune.config import Config, from_dict
from freezetune.record import TIMING_KEYS, Summary, read_checkpoint
from freezetune.train import Interrupted, StopRequest, run


# Not conftest's tiny run: mobilenet_v3_small, 4 epochs of 32 images with val_loss monitored, so that
# the best epoch can be another than the last; the tests count its epochs and files.
def config(tmp: Path, name: str, **train: Any) -> Config:
    # Fake images are noise: the validation loss wanders, which gives a best epoch that is not the last.
    return from_dict(
        {
            "name": name,
            "seed": 5,
            "model": {"arch": "mobilenet_v3_small", "num_classes": 3},
            "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 32, "val_samples": 16},
            "freeze": {"preset": "until:features.11"},
            "train": {
                "epochs": 4,
                "output_dir": str(tmp / name),
                "optimizer": {"lr": 0.1},
                "monitor": "val_loss",
                **train,
            },
        }
    )


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    # best.pt's frozen tensors are the run's one copy (freezetune.record.shared): read whole, as loaders do.
    return read_checkpoint(path, "test")["model"]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_pt_holds_the_best_epoch_where_the_curve_says_so(tmp_path: Path) -> None:
    summary = run(config(tmp_path, "four")).summary
    losses = [m["val_loss"] for m in metrics(tmp_path / "four")]
    best = 1 + losses.index(min(losses))
    assert best != 4, losses  # the case this test is about: the last epoch is not the best
    assert summary.best == {
        "file": "best.pt",
        "epoch": best,
        "monitor": "val_loss",
        "value": min(losses),
        "val_acc": metrics(tmp_path / "four")[best - 1]["val_acc"],
        "val_loss": min(losses),
    }
    saved = torch.load(tmp_path / "four" / "best.pt", weights_only=True)
    assert saved["epoch"] == best and saved["classes"] == summary.classes
    # The same run stopped after the best epoch ends with exactly best.pt's weights (no LR schedule:
    # the first epochs do not depend on how many follow).
    run(config(tmp_path, "short", epochs=best))
    assert same(tensors(tmp_path / "four" / "best.pt"), tensors(tmp_path / "short" / "model.pt"))
    assert not same(tensors(tmp_path / "four" / "best.pt"), tensors(tmp_path / "four" / "model.pt"))


def test_a_delta_best_pt_is_a_delta_too(tmp_path: Path) -> None:
    run(config(tmp_path, "delta", epochs=2, save="delta"))
    saved = torch.load(tmp_path / "delta" / "best.pt", weights_only=True)
    assert "delta" in saved and "model" not in saved


@pytest.fixture(scope="module")
def stopped_early(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    tmp = tmp_path_factory.mktemp("early")
    return tmp / "early", run(config(tmp, "early", epochs=8, early_stopping={"patience": 2})).summary


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(
    stopped_early: tuple[Path, Summary],
) -> None:
    folder, summary = stopped_early
    losses = [m["val_loss"] for m in metrics(folder)]
    last = len(losses)
    assert last < 8 and summary.epochs == last
    assert min(losses[-2:]) >= min(losses[:-2])  # the last two epochs did not improve: that is why it stopped
    assert summary.early_stopping == {
        "patience": 2,
        "min_delta": 0.0,
        "stopped": True,
        "last_epoch": last,
        "epochs_without_improvement": 2,
    }
    saved = torch.load(folder / "model.pt", weights_only=True)
    assert saved["epoch"] == last and saved["config"]["train"]["epochs"] == 8
    assert not (folder / "checkpoint.pt").exists()  # finished: nothing to resume


@pytest.mark.parametrize("stop_at", [3, 9], ids=["in-epoch-1", "in-epoch-3"])
def test_an_interrupted_early_stopping_run_resumes_to_the_same_end(
    tmp_path: Path, stopped_early: tuple[Path, Summary], stop_at: int, stop_after: Callable[[int], StopRequest]
) -> None:
    ref_folder, ref = stopped_early
    cfg = config(tmp_path, "early", epochs=8, early_stopping={"patience": 2})
    assert isinstance(run(cfg, stop=stop_after(stop_at)), Interrupted)
    # Resumed from the run's own config.yaml (as `freezetune predict` suggests for an unfinished run): its
    # preprocessing is all explicit there, yet the record still says where each value first came from.
    saved = from_dict(yaml.safe_load((tmp_path / "early" / "config.yaml").read_text()))
    done = run(saved, resume=tmp_path / "early").summary
    assert done.early_stopping == ref.early_stopping and done.best == ref.best
    assert done.preprocessing == ref.preprocessing and done.preprocessing["from"]["mean"] == "fake default"
    for name in ("model.pt", "best.pt"):
        assert same(tensors(tmp_path / "early" / name), tensors(ref_folder / name)), name
    strip = TIMING_KEYS
    assert [{k: v for k, v in m.items() if k not in strip} for m in metrics(tmp_path / "early")] == [
        {k: v for k, v in m.items() if k not in strip} for m in metrics(ref_folder)
    ]
