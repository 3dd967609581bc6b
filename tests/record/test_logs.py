"""train.log's writers (``freezetune.record.logs``) on their own: the rows and columns of
steps.jsonl, steps.csv and metrics.csv, a column that appears mid-run, the rows a resume
drops, and TensorBoard's event files."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from freezetune.config import ConfigError
from freezetune.record import RunDir, RunLogs, check_logs, read_jsonl


def table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def metrics_row(epoch: int, lrs: dict[str, float]) -> dict[str, Any]:
    return {"epoch": epoch, "train_loss": 1.5 / epoch, "val_loss": 2.0 / epoch, "val_acc": 0.25 * epoch,
            "epoch_time_s": 0.5, "samples_per_s": 100.0, "steps": 2, "trainable_params": 10 * epoch,
            "trainable_tensors": 2, "optimizer_groups": len(lrs), "lr": lrs}  # fmt: skip


def two_epochs(logs: RunLogs) -> None:
    """Epoch 1 trains the head; epoch 2 adds a group (an unfreeze event) and so a column. The
    numbers are exact in float32 (TensorBoard's)."""
    head = {"head": 0.5}
    both = {"head": 0.25, "layer4": 0.125}
    for step in (1, 2):
        logs.step(step, torch.tensor(2.0**-step), head)
    logs.epoch(metrics_row(1, head), 2)
    logs.event({"epoch": 2, "event": "unfreeze", "target": "layer4", "tensors": 4}, 3)
    for step in (3, 4):
        logs.step(step, torch.tensor(2.0**-step), both)
    logs.epoch(metrics_row(2, both), 4)


def test_steps_and_metrics_rows_in_jsonl_and_csv(tmp_path: Path) -> None:
    with RunLogs(RunDir(tmp_path), ["jsonl", "csv"], steps_per_epoch=2) as logs:
        two_epochs(logs)
    steps = read_jsonl(tmp_path / "steps.jsonl")
    assert [(r["step"], r["epoch"], r["loss"]) for r in steps] == [
        (1, 1, 0.5),
        (2, 1, 0.25),
        (3, 2, 0.125),
        (4, 2, 0.0625),
    ]
    assert steps[3]["lr"] == {"head": 0.25, "layer4": 0.125}
    columns, rows = table(tmp_path / "steps.csv")
    # layer4 joined in epoch 2: the file was rewritten with the wider header, earlier rows empty there.
    assert columns == ["step", "epoch", "loss", "lr/head", "lr/layer4"]
    assert [r["lr/layer4"] for r in rows] == ["", "", "0.125", "0.125"]
    assert [float(r["loss"]) for r in rows] == [r["loss"] for r in steps]  # floats round-trip exactly
    columns, rows = table(tmp_path / "metrics.csv")
    assert columns == [*list(metrics_row(1, {}))[:-1], "lr/head", "lr/layer4"]
    assert float(rows[1]["val_loss"]) == 1.0 and rows[0]["lr/layer4"] == "" and rows[1]["lr/layer4"] == "0.125"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "steps.csv", "steps.jsonl"]


def test_only_what_train_log_asks_for(tmp_path: Path) -> None:
    (tmp_path / "csv").mkdir()  # the runner's folder exists before its logs
    with RunLogs(RunDir(tmp_path / "csv"), ["csv"], steps_per_epoch=2) as logs:
        two_epochs(logs)
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["metrics.csv", "steps.csv"]
    (tmp_path / "none").mkdir()
    with RunLogs(RunDir(tmp_path / "none"), [], steps_per_epoch=2) as logs:
        two_epochs(logs)
    assert list((tmp_path / "none").iterdir()) == []


def test_a_rank_that_does_not_write_writes_nothing(tmp_path: Path) -> None:
    with RunLogs(RunDir(tmp_path, write=False), ["jsonl", "csv", "tensorboard"], steps_per_epoch=2) as logs:
        two_epochs(logs)
    assert list(tmp_path.iterdir()) == []


def test_a_resume_drops_the_rows_past_its_checkpoint(tmp_path: Path) -> None:
    # The first run logged all 4 steps and both epochs, then died before its checkpoint of epoch 2
    # was written: the resume starts after step 2 and epoch 1, and must not log those twice.
    with RunLogs(RunDir(tmp_path), ["jsonl", "csv"], steps_per_epoch=2) as logs:
        two_epochs(logs)
    with RunLogs(RunDir(tmp_path), ["jsonl", "csv"], steps_per_epoch=2, steps_done=2, epochs_done=1) as logs:
        logs.step(3, torch.tensor(7.0), {"head": 0.25, "layer4": 0.125})
    assert [(r["step"], r["loss"]) for r in read_jsonl(tmp_path / "steps.jsonl")] == [(1, 0.5), (2, 0.25), (3, 7.0)]
    columns, rows = table(tmp_path / "steps.csv")
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "0.5"), ("2", "0.25"), ("3", "7.0")]
    assert columns == ["step", "epoch", "loss", "lr/head", "lr/layer4"]  # the header as it was
    assert [r["epoch"] for r in table(tmp_path / "metrics.csv")[1]] == ["1"]


def test_tensorboard_scalars_and_events(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogs(RunDir(tmp_path), ["tensorboard"], steps_per_epoch=2) as logs:
        two_epochs(logs)
    assert [p.name for p in tmp_path.iterdir()] == ["tb"]
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert scalars["train/loss"] == [(1, 0.5), (2, 0.25), (3, 0.125), (4, 0.0625)]
    assert scalars["train/lr/head"] == [(1, 0.5), (2, 0.5), (3, 0.25), (4, 0.25)]
    assert scalars["train/lr/layer4"] == [(3, 0.125), (4, 0.125)]
    assert scalars["val/acc"] == [(2, 0.25), (4, 0.5)]
    assert scalars["val/loss"] == [(2, 2.0), (4, 1.0)]
    assert scalars["train/epoch_loss"] == [(2, 1.5), (4, 0.75)]
    assert scalars["train/trainable_params"] == [(2, 10.0), (4, 20.0)]
    assert scalars["train/samples_per_s"] == [(2, 100.0), (4, 100.0)]
    (text,) = acc.Tensors("events/text_summary")
    assert text.step == 3 and b"unfreeze" in text.tensor_proto.string_val[0]


def test_a_missing_tensorboard_is_one_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    check_logs(["jsonl", "csv"])  # nothing to import
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(ConfigError) as info:
        check_logs(["jsonl", "tensorboard"])
    (problem,) = info.value.problems
    assert problem.startswith("train.log: tensorboard needs the tensorboard package")
    assert "pip install 'freezetune[tensorboard]'" in problem
