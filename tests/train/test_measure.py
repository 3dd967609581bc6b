"""train.measure: what a run measures after its last epoch (freezetune.train.runner._speed).
quick takes the evaluation speed from the epochs' own evaluation and compares autograd on one
sub-batch; full runs the extra passes; off runs none and records nulls. The finishing line,
finish_s and the run report follow."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from freezetune.config import Config, ConfigError, from_dict
from freezetune.report import load_run
from freezetune.report.run_report import write_run_report
from freezetune.train import run
from freezetune.train import runner as runner_mod


def test_train_measure_accepts_its_three_modes_and_defaults_to_quick(tiny_tree: Callable[..., dict]) -> None:
    assert from_dict(tiny_tree()).train.measure == "quick"
    assert [from_dict(tiny_tree({"train.measure": m})).train.measure for m in ("full", "off")] == ["full", "off"]
    with pytest.raises(ConfigError) as err:
        from_dict(tiny_tree({"train.measure": "fast"}))
    message = str(err.value)
    assert "train.measure" in message and "'fast'" in message
    assert all(choice in message for choice in ("full", "quick", "off"))


@pytest.fixture
def eval_speed_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each call of the runner's eval_speed: its batches' shapes and its rounds (the real one runs)."""
    calls: list[dict[str, Any]] = []
    real = runner_mod.eval_speed

    def spy(model: torch.nn.Module, batches: list[torch.Tensor], device: torch.device, **kwargs: Any) -> dict:
        calls.append(
            {"shapes": [tuple(x.shape) for x in batches], "rounds": kwargs["rounds"], "warmup": kwargs["warmup"]}
        )
        return real(model, batches, device, **kwargs)

    monkeypatch.setattr(runner_mod, "eval_speed", spy)
    return calls


def trained(tiny_config: Callable[..., Config], tmp_path: Path, measure: str, **edits: Any) -> dict[str, Any]:
    cfg = tiny_config({"train.measure": measure, "train.output_dir": str(tmp_path / measure), **edits})
    run(cfg)
    return json.loads((tmp_path / measure / "summary.json").read_text())


def test_quick_compares_autograd_on_one_sub_batch_and_takes_throughput_from_the_evaluation(
    tiny_config: Callable[..., Config],
    tmp_path: Path,
    eval_speed_calls: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Validation: 6 images in batches of 4, so two batches; the first is cut to QUICK_SAMPLES (2 here).
    monkeypatch.setattr(runner_mod, "QUICK_SAMPLES", 2)
    speed = trained(tiny_config, tmp_path, "quick", **{"data.val_samples": 6})["speed"]
    assert eval_speed_calls == [{"shapes": [(2, 3, 32, 32)], "rounds": 1, "warmup": False}]  # not 3 batches x 2 rounds
    assert speed["measure"] == "quick" and speed["eval_from"] == "last epoch's evaluation"
    assert speed["eval_batches_timed"] == 1  # of the two evaluated, the first (cold) is left out
    assert speed["eval_samples_per_s"] == pytest.approx(2 / speed["eval_batch_s"])  # the second batch: 2 images
    comparison = speed["grad_comparison"]
    assert (comparison["batches"], comparison["samples"], comparison["rounds"], comparison["warmup"]) == (
        1,
        2,
        1,
        False,
    )
    assert speed["eval_speedup_no_grad"] == comparison["eval_speedup_no_grad"] > 0
    assert speed["eval_grad_samples_per_s"] == comparison["eval_grad_samples_per_s"] > 0


def test_full_runs_the_extra_passes_and_reports_their_throughput(
    tiny_config: Callable[..., Config], tmp_path: Path, eval_speed_calls: list[dict[str, Any]]
) -> None:
    speed = trained(tiny_config, tmp_path, "full")["speed"]
    assert eval_speed_calls == [
        {"shapes": [(4, 3, 32, 32)], "rounds": 2, "warmup": True}
    ]  # the tiny run's one validation batch
    assert speed["measure"] == "full" and speed["eval_from"] == "extra passes"
    assert speed["eval_samples_per_s"] == speed["grad_comparison"]["eval_samples_per_s"]
    assert speed["grad_comparison"]["samples"] == 4


def test_off_runs_no_extra_pass_and_records_nulls_that_the_report_shows(
    tiny_config: Callable[..., Config], tmp_path: Path, eval_speed_calls: list[dict[str, Any]]
) -> None:
    summary = trained(tiny_config, tmp_path, "off")
    speed = summary["speed"]
    assert eval_speed_calls == []
    assert speed["measure"] == "off"
    assert speed["eval_grad_samples_per_s"] is None
    assert speed["eval_speedup_no_grad"] is None
    assert speed["grad_comparison"] is None
    assert speed["eval_samples_per_s"] > 0  # the epoch's own evaluation, timed as it ran
    write_run_report(load_run(tmp_path / "off"))
    report = (tmp_path / "off" / "report.md").read_text()
    assert "autograd comparison not measured" in report
    assert f"After the last epoch: {summary['finish_s']:.1f} s (train.measure off)." in report


def test_a_finishing_line_precedes_the_work_after_the_last_epoch_and_finish_s_times_it(
    tiny_config: Callable[..., Config],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = runner_mod.eval_speed

    def slow(*args: Any, **kwargs: Any) -> dict:
        time.sleep(0.3)  # a measurement that takes a while: finish_s counts it, wall_time_s does not
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "eval_speed", slow)
    with caplog.at_level(logging.INFO, logger="freezetune"):
        summary = trained(tiny_config, tmp_path, "quick")
    lines = [r.getMessage() for r in caplog.records]
    finishing = [i for i, line in enumerate(lines) if ": finishing: " in line]
    checked = summary["frozen_check"]["checked"]
    assert [lines[i] for i in finishing] == [
        f"tiny: finishing: verifying {checked} frozen tensors, measuring eval speed (quick), saving model.pt ..."
    ]
    assert summary["finish_s"] >= 0.3
    assert list(summary).index("finish_s") == list(summary).index("train_time_s") + 1
