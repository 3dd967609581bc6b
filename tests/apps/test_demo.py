"""``freezetune.demo``: when the pretraining checkpoint can be reused, and the
results table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from freezetune.apps import pretrain_is_current, results_table
from freezetune.checks import resolve
from freezetune.config import Config, from_dict, to_dict
from freezetune.train import Interrupted, run

# Not conftest's tiny run: the shape of the demo's pretraining run (every parameter trains, FakeData's
# 10 classes), which pretrain_is_current compares configs against.
TINY = {
    "name": "tiny_pretrain",
    "seed": 0,
    "model": {"arch": "freezetune_testnets:resnet18_narrow", "weights": None},
    "data": {"dataset": "fake", "image_size": 32, "batch_size": 8, "train_samples": 8, "val_samples": 8},
    "freeze": {"preset": "full"},
    "train": {"epochs": 1, "device": "cpu"},
}


def tiny_cfg(out: Path, *overrides: tuple[str, str, object]) -> Config:
    tree = json.loads(json.dumps(TINY))  # a deep copy
    tree["train"]["output_dir"] = str(out)
    for section, key, value in overrides:
        tree[section][key] = value
    return from_dict(tree)


def save_record(cfg: Config, config: dict | None = None, summary: bool = True) -> None:
    """What a finished run leaves behind, as far as pretrain_is_current looks."""
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    saved = to_dict(resolve(cfg)[0]) if config is None else config
    state = {"model": {"w": torch.zeros(2)}, "config": saved, "epoch": 1}
    torch.save(state, cfg.output_dir / "model.pt")
    if summary:
        (cfg.output_dir / "summary.json").write_text("{}\n")


# --------------------------------------------------------------------------- pretrain_is_current


def test_not_current_when_the_folder_is_missing_or_empty(tmp_path: Path) -> None:
    assert pretrain_is_current(tiny_cfg(tmp_path / "missing")) is False
    (tmp_path / "empty").mkdir()
    assert pretrain_is_current(tiny_cfg(tmp_path / "empty")) is False


def test_current_when_the_checkpoint_was_trained_from_this_exact_config(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path)
    save_record(cfg)
    assert pretrain_is_current(cfg) is True
    # An equal config loaded afresh is just as current: equality, not identity.
    assert pretrain_is_current(tiny_cfg(tmp_path)) is True


def test_not_current_without_summary(tmp_path: Path) -> None:
    # A model.pt without summary.json is a run that did not finish.
    cfg = tiny_cfg(tmp_path)
    save_record(cfg, summary=False)
    assert pretrain_is_current(cfg) is False


def test_not_current_when_the_config_differs(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path)
    save_record(cfg)
    assert pretrain_is_current(tiny_cfg(tmp_path, ("train", "epochs", 2))) is False
    assert pretrain_is_current(tiny_cfg(tmp_path, ("data", "train_samples", 16))) is False
    assert pretrain_is_current(from_dict({**to_dict(cfg), "seed": 1})) is False
    assert pretrain_is_current(cfg) is True  # the saved record itself is untouched


def test_not_current_when_the_checkpoint_has_no_config(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path)
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(2)}, cfg.output_dir / "model.pt")  # a raw state_dict
    (cfg.output_dir / "summary.json").write_text("{}\n")
    assert pretrain_is_current(cfg) is False


def test_not_current_when_the_checkpoint_is_corrupt(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path)
    save_record(cfg)
    ckpt = cfg.output_dir / "model.pt"
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[: len(good) // 2])  # truncated mid-write
    assert pretrain_is_current(cfg) is False
    ckpt.write_bytes(b"not a checkpoint at all")
    assert pretrain_is_current(cfg) is False


def test_not_current_when_the_checkpoint_needs_code_to_load(tmp_path: Path) -> None:
    # weights_only=True refuses arbitrary pickled objects: treated as not current, not run.
    cfg = tiny_cfg(tmp_path)
    save_record(cfg)
    torch.save({"config": to_dict(cfg), "extra": Path("x")}, cfg.output_dir / "model.pt")
    assert pretrain_is_current(cfg) is False


def test_a_real_run_is_current_for_its_own_config_only(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "run")
    run(cfg)
    assert pretrain_is_current(cfg) is True
    assert pretrain_is_current(tiny_cfg(tmp_path / "run", ("train", "epochs", 2))) is False


# --------------------------------------------------------------------------- results_table


def summary(name: str, trainable: int, pct: float, acc: float, epoch_s: float, wall_s: float, unchanged: bool) -> dict:
    return {
        "name": name,
        "seed": 3,
        "train_time_s": wall_s / 2,
        "params_trainable": trainable,
        "trainable_pct": pct,
        "final_val_acc": acc,
        "epochs": 2,
        "epoch_time_s": epoch_s,
        "wall_time_s": wall_s,
        "checkpoint": {"full_bytes": 44_790_539, "delta_bytes": 11_264},
        "frozen_unchanged": unchanged,
    }


def test_results_table_has_one_formatted_row_per_summary() -> None:
    table = results_table(
        [
            summary("fmnist_full", 11_179_077, 100.0, 0.91234, 12.345, 1234.4, True),
            summary("fmnist_linear_probe", 2_565, 0.022946, 0.5, 3.04, 4321.6, False)
            | {"cache": {"used": True, "build_s": 1.46}},
        ]
    )
    lines = table.splitlines()
    assert len(lines) == 2 + 2  # header, rule, one line per summary
    headers = [
        "config",
        "seed",
        "trainable params",
        "trainable",
        "val acc",
        "epochs",
        "epoch s",
        "cache build s",
        "train s",
        "run s",
        "model.pt MiB full / delta",
        "frozen unchanged",
    ]
    assert re.split(r"\s{2,}", lines[0]) == headers
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == [
        "fmnist_full",
        "3",
        "11,179,077",
        "100.00%",
        "0.9123",
        "2",
        "12.3",
        "-",
        "617.2",
        "1234.4",
        "42.7",
        "/",
        "0.011",
        "yes",
    ]
    assert lines[3].split() == [
        "fmnist_linear_probe",
        "3",
        "2,565",
        "0.02%",
        "0.5000",
        "2",
        "3.0",
        "1.5",
        "2160.8",
        "4321.6",
        "42.7",
        "/",
        "0.011",
        "NO",
    ]


def test_results_table_right_aligns_the_numbers() -> None:
    table = results_table(
        [
            summary("a", 5, 1.0, 0.5, 1.0, 10.0, True),
            summary("b", 1_000_000, 50.0, 0.25, 10.0, 1000.0, True),
        ]
    )
    header, _, row_a, row_b = table.splitlines()
    # Right-aligned: the short number ends where the long one ends.
    assert row_a.index("5") + 1 == row_b.index("1,000,000") + len("1,000,000")
    assert row_a.index("1.00%") + len("1.00%") == row_b.index("50.00%") + len("50.00%")


def test_results_table_of_no_summaries_is_just_the_header() -> None:
    assert len(results_table([]).splitlines()) == 2


# --------------------------------------------------------------------------- a stopped run stops the demo


def test_an_interrupted_run_stops_the_demo_with_what_a_rerun_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C (or SIGTERM) in a fine-tune: the demo used to go on to read that run's result and ended
    # in "no finished run there". It stops there, starts no later run, and says what a rerun does.
    import freezetune.apps.demo as demo

    started: list[str] = []

    def stopped(cfg: Config, **kwargs: object) -> Interrupted:
        started.append(cfg.name)
        return Interrupted(cfg.name, 2, 5, cfg.output_dir)

    monkeypatch.setattr(demo, "run", stopped)
    monkeypatch.setattr(demo, "pretrain_is_current", lambda cfg: True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KeyboardInterrupt) as stop:
        demo.run_demo()
    assert started == ["fmnist_full"]
    assert str(stop.value) == (
        "demo stopped: fmnist_full seed 0 was interrupted in epoch 2. Run the demo again to go on: finished runs "
        "are reused, this one trains again"
    )
