"""train.log in real runs: steps.jsonl, the CSV files and TensorBoard agree with metrics.jsonl,
an interrupted and resumed run logs each step and epoch exactly once, and asking for
TensorBoard without its package is one config error with nothing written."""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from freezetune.cli.main import main
from freezetune.config import Config, from_dict
from freezetune.record import RECORD_FILES, TIMING_KEYS, read_jsonl
from freezetune.train import Interrupted, StopRequest, run

LOGS = ["jsonl", "csv", "tensorboard"]
STEPS_PER_EPOCH = 4  # 16 samples, batch 4


@pytest.fixture(scope="session")
def raw(tiny_tree: Callable[..., dict]) -> Callable[..., dict[str, Any]]:
    """``raw(tmp, name, log)``: conftest's tiny run, 16 images (4 steps an epoch) for 2 epochs,
    logging to ``log``."""

    def make(tmp: Path, name: str, log: list[str]) -> dict[str, Any]:
        # Epoch 2 unfreezes layer4: an event, and a second optimizer group (a new lr/ column).
        return tiny_tree(
            {
                "name": name,
                "seed": 3,
                "data.train_samples": 16,
                "data.val_samples": 8,
                "freeze.preset": "gradual",
                "freeze.gradual": ["layer4"],
                "train.epochs": 2,
                "train.output_dir": str(tmp / name),
                "train.log": log,
            }
        )

    return make


@pytest.fixture(scope="session")
def config(raw: Callable[..., dict[str, Any]]) -> Callable[..., Config]:
    """``config(tmp, name, log=LOGS)``: :func:`raw`'s run as a :class:`Config`."""
    return lambda tmp, name, log=LOGS: from_dict(raw(tmp, name, log))


def table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def flat(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the CSV files hold it: a nested dict as key/name columns (lr/<group>)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        out.update({f"{key}/{n}": x for n, x in value.items()} if isinstance(value, dict) else {key: value})
    return out


def as_csv(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """What a CSV of ``rows`` reads back as: its columns in order of appearance, missing cells empty."""
    flats = [flat(r) for r in rows]
    columns = list(dict.fromkeys(k for f in flats for k in f))
    return columns, [{c: str(f[c]) if c in f else "" for c in columns} for f in flats]


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tb"))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


def untimed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory, config: Callable[..., Config]) -> Path:
    pytest.importorskip("tensorboard")
    tmp = tmp_path_factory.mktemp("logs")
    run(config(tmp, "unbroken"))
    return tmp / "unbroken"


def test_csv_steps_and_tensorboard_agree_with_metrics_jsonl(unbroken: Path) -> None:
    metrics = read_jsonl(unbroken / "metrics.jsonl")
    steps = read_jsonl(unbroken / "steps.jsonl")
    assert sorted(p.name for p in unbroken.iterdir()) == sorted(
        {*RECORD_FILES, "metrics.csv", "steps.csv", "tb"} - {"checkpoint.pt"}
    )
    # One row per optimizer step, numbered across epochs; an epoch's last step has its LRs.
    assert sum(m["steps"] for m in metrics) == len(steps) == 2 * STEPS_PER_EPOCH
    assert [(r["step"], r["epoch"]) for r in steps] == [(s, 1 + (s - 1) // STEPS_PER_EPOCH) for s in range(1, 9)]
    assert [steps[STEPS_PER_EPOCH * m["epoch"] - 1]["lr"] for m in metrics] == [m["lr"] for m in metrics]
    assert len(metrics[1]["lr"]) == 2  # layer4 joined in epoch 2
    assert table(unbroken / "metrics.csv") == as_csv(metrics)
    assert table(unbroken / "steps.csv") == as_csv(steps)
    tb = scalars(unbroken)
    assert tb["train/loss"] == [(r["step"], f32(r["loss"])) for r in steps]
    for group in metrics[1]["lr"]:
        assert tb[f"train/lr/{group}"] == [(r["step"], f32(r["lr"][group])) for r in steps if group in r["lr"]]
    ends = [STEPS_PER_EPOCH * m["epoch"] for m in metrics]
    for tag, key in [
        ("val/loss", "val_loss"),
        ("val/acc", "val_acc"),
        ("train/epoch_loss", "train_loss"),
        ("train/samples_per_s", "samples_per_s"),
        ("train/trainable_params", "trainable_params"),
    ]:
        assert tb[tag] == [(s, f32(m[key])) for s, m in zip(ends, metrics)], tag


@pytest.mark.parametrize("stop_at", [2, 4], ids=["in-epoch-1", "after-epoch-1"])
def test_an_interrupted_and_resumed_run_logs_each_step_and_epoch_once(
    tmp_path: Path, unbroken: Path, stop_after: type[StopRequest], stop_at: int, config: Callable[..., Config]
) -> None:
    cfg = config(tmp_path, "resumed")
    folder = tmp_path / "resumed"
    assert isinstance(run(cfg, stop=stop_after(stop_at)), Interrupted)
    done = torch.load(folder / "checkpoint.pt", weights_only=False)["global_step"]
    # A kill between a log's write and the checkpoint's leaves rows past the checkpoint: the resume drops them.
    ghost = read_jsonl(folder / "steps.jsonl")[-1] | {"step": done + 1, "loss": 99.0}
    with open(folder / "steps.jsonl", "a") as f:
        f.write(json.dumps(ghost) + "\n")
    with open(folder / "steps.csv", "a") as f:
        f.write(f"{done + 1},1,99.0\n")
    run(cfg, resume=folder)
    # Bitwise the unbroken run's rows, once each (on the CPU a resumed run is exact).
    assert read_jsonl(folder / "steps.jsonl") == read_jsonl(unbroken / "steps.jsonl")
    assert table(folder / "steps.csv") == table(unbroken / "steps.csv")
    assert untimed(read_jsonl(folder / "metrics.jsonl")) == untimed(read_jsonl(unbroken / "metrics.jsonl"))
    columns, rows = table(folder / "metrics.csv")
    assert (columns, untimed(rows)) == (table(unbroken / "metrics.csv")[0], untimed(table(unbroken / "metrics.csv")[1]))
    # TensorBoard: two sessions' files; the second purges from its first step, so each step shows once.
    assert len(list((folder / "tb").iterdir())) == 2
    tb, ref = scalars(folder), scalars(unbroken)
    assert tb["train/loss"] == ref["train/loss"]
    assert [s for s, _ in tb["val/acc"]] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_tensorboard_without_its_package_is_one_config_error_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], raw: Callable[..., dict]
) -> None:
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()  # main() calls logging.basicConfig: undo what it installs
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    raw_cfg = raw(Path("runs"), "tb", ["jsonl", "tensorboard"])
    (tmp_path / "tb.yaml").write_text(yaml.safe_dump(raw_cfg))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    rc = main(["train", "--config", "tb.yaml", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    (problem,) = [line[len("error: ") :] for line in err.splitlines() if line.startswith("error: ")]
    assert "train.log: tensorboard needs the tensorboard package" in problem
    assert "pip install 'freezetune[tensorboard]'" in problem
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tb.yaml"]  # no runs/, nothing else
