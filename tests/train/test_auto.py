"""freeze.preset auto in real runs: decisions become freeze events at the next epoch, the cache
follows the new frontier, frozen tensors stay bitwise unchanged, a resume across a decision
ends bitwise where the uninterrupted run ends, and a run where nothing converges freezes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from freezetune.config import ConfigError, from_dict
from freezetune.plan import FreezeError
from freezetune.record import TIMING_KEYS, Summary, read_jsonl
from freezetune.train import Interrupted, StopRequest, run

STEPS = 4  # 32 images, batch 8


def tree(out: Path, **auto: Any) -> dict[str, Any]:
    return {
        "name": "auto",
        "seed": 3,
        "model": {"arch": "freezetune_testnets:resnet18_narrow", "num_classes": 3},
        "data": {"dataset": "fake", "image_size": 16, "batch_size": 8, "train_samples": 32, "val_samples": 8},
        # Every stage before layer3 converges as soon as a rate exists (after epoch 2): a known decision.
        "freeze": {"preset": "auto", "auto": {"threshold": 1e9, "ceiling": "layer3", "sample_every": 1, **auto}},
        "train": {"epochs": 4, "output_dir": str(out), "optimizer": {"lr": 0.01}},
    }


def rows(folder: Path, name: str) -> list[dict]:
    return read_jsonl(folder / name)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "model.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, cache_setup_free: Callable) -> tuple[Path, Summary]:
    out = tmp_path_factory.mktemp("auto") / "ref"
    with cache_setup_free():  # the cache follows auto's freezing: at this size its set-up alone would not pay
        return out, run(from_dict(tree(out))).summary


def test_the_decision_freezes_the_prefix_from_the_next_epoch_and_the_cache_follows(
    reference: tuple[Path, Summary],
) -> None:
    folder, summary = reference
    events = rows(folder, "events.jsonl")
    decisions = [e for e in events if e["event"] == "auto"]
    assert [d["decided_after_epoch"] for d in decisions] == [1, 2, 3, 4]
    first, second = decisions[0], decisions[1]
    assert first["freeze"] == [] and first["reason"].startswith("warm-up")
    assert second["freeze"] == ["conv1", "bn1", "layer1", "layer2"] and second["epoch"] == 3
    assert set(second["rates"]) == {"conv1", "bn1", "layer1", "layer2"} and second["threshold"] == 1e9
    assert all(v > 0 for v in second["norms"].values())  # the signal: each stage's mean gradient norm
    freezes = [e for e in events if e["event"] == "freeze"]
    assert [(e["epoch"], e["target"], e["origin"]) for e in freezes] == [
        (3, "conv1", "freeze.auto[0]"),
        (3, "bn1", "freeze.auto[1]"),
        (3, "layer1", "freeze.auto[2]"),
        (3, "layer2", "freeze.auto[3]"),
    ]
    assert decisions[2]["reason"] == "every stage auto may freeze is frozen"  # the ceiling: layer3 on train
    trained = [r["trainable_params"] for r in rows(folder, "metrics.jsonl")]
    assert trained[0] == trained[1] == summary.params_total > trained[2] == trained[3]
    assert summary.frozen_unchanged and summary.cache["used"]  # cached at layer2's output from epoch 3
    assert summary.cache["frontier"].startswith("layer2")
    auto = summary.auto
    assert auto["stages"] == ["conv1", "bn1", "layer1", "layer2"]  # the ceiling, layer3, and after: never
    assert auto["frozen_prefix"] == auto["stages"] and len(auto["decisions"]) == 4


def test_auto_settings_need_the_auto_preset_and_replace_a_schedule(tmp_path: Path) -> None:
    raw = tree(tmp_path / "x")
    raw["freeze"]["preset"] = "full"
    with pytest.raises(ConfigError, match="freeze.auto: only used with freeze.preset: auto"):
        from_dict(raw)
    raw = tree(tmp_path / "x")
    raw["freeze"]["schedule"] = [{"epoch": 2, "freeze": "conv1"}]
    with pytest.raises(ConfigError, match="preset 'auto' decides the schedule itself"):
        from_dict(raw)
    raw = tree(tmp_path / "x", ceiling="relu")
    with pytest.raises(FreezeError, match="freeze.auto.ceiling: 'relu' is no top-level module with parameters"):
        run(from_dict(raw))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("stop_at", [STEPS * 2, STEPS * 2 + 2], ids=["after-decision", "mid-3"])
def test_a_resume_across_a_decision_ends_bitwise_equal(
    tmp_path: Path, reference: tuple[Path, Summary], stop_at: int, stop_after: Callable[[int], StopRequest]
) -> None:
    ref_folder, ref = reference
    cfg = from_dict(tree(tmp_path / "run"))
    assert isinstance(run(cfg, stop=stop_after(stop_at)), Interrupted)
    done = run(cfg, resume=tmp_path / "run").summary
    mine, theirs = weights(tmp_path / "run"), weights(ref_folder)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    def untimed(folder: Path, name: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows(folder, name)]

    assert untimed(tmp_path / "run", "metrics.jsonl") == untimed(ref_folder, "metrics.jsonl")
    assert rows(tmp_path / "run", "events.jsonl") == rows(ref_folder, "events.jsonl")  # decisions, norms and all
    assert done.schedule == ref.schedule and done.frozen_unchanged


def test_a_run_where_nothing_converges_freezes_nothing(tmp_path: Path) -> None:
    summary = run(from_dict(tree(tmp_path / "none", threshold=1e-12))).summary
    decisions = [e for e in rows(tmp_path / "none", "events.jsonl") if e["event"] == "auto"]
    assert all(d["freeze"] == [] for d in decisions) and "conv1 still learning" in decisions[1]["reason"]
    assert summary.params_trainable == summary.params_total
    assert not [e for e in rows(tmp_path / "none", "events.jsonl") if e["event"] == "freeze"]
