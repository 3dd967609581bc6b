"""summary.json's layout: :class:`Summary` made from a run's facts, and its JSON."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from freezetune.config import from_dict
from freezetune.plan import ModelTree, plan_from_config
from freezetune.record import EpochResult, FrozenCheck, RunFacts, Summary


def facts(tree: ModelTree, **changes: object) -> RunFacts:
    cfg = from_dict(
        {"name": "probe", "model": {"arch": "resnet18", "num_classes": 3}, "freeze": {"preset": "linear_probe"}}
    )
    base = RunFacts(
        cfg=cfg,
        plan=plan_from_config(tree, "linear_probe", [], "eval"),
        epochs=[EpochResult(1, 1.0, 0.9, 0.5, 2.0, 10.0, 3, 2.5), EpochResult(2, 0.8, 0.7, 0.25, 4.0, 30.0, 3, 7.0)],
        check=FrozenCheck(True, 120, [], True),
        wall_s=12.0,
        train_samples=24,
        weights={"source": None, "head": "fc", "loaded": [], "new": ["fc.weight", "fc.bias"]},
        device="cpu",
        speed={},
        memory={},
        cache={"used": False},
        events=[],
        optimizer_groups=[],
        checkpoint={"save": "full"},
        run_dir="runs/probe",
    )
    return RunFacts(**(vars(base) | changes))


def test_a_summary_is_the_runs_facts_laid_out_flat(meta_tree: Callable[..., ModelTree]) -> None:
    summary = Summary.of(facts(meta_tree("resnet18", num_classes=3)))
    data = summary.to_json()
    assert list(data)[:3] == ["name", "arch", "freeze_preset"] and list(data)[-1] == "run_dir"
    assert "distributed" not in data and "auto" not in data  # absent, not null, when not asked for
    assert (data["params_trainable"], data["params_total"] - data["params_frozen"]) == (512 * 3 + 3, 512 * 3 + 3)
    assert (data["final_val_acc"], data["best_val_acc"], data["epochs"]) == (0.25, 0.5, 2)
    assert (data["epoch_time_s"], data["samples_per_s"], data["train_time_s"]) == (3.0, 20.0, 7.0)
    assert (data["startup_s"], data["startup_from"]) == (None, None)
    assert data["frozen_unchanged"] is True and data["frozen_until_event_unchanged"] is True
    assert json.loads(json.dumps(data)) == data  # JSON types only: the file reads back as written


def test_a_replica_that_diverged_or_a_tensor_changed_before_its_event_fails_the_check(
    meta_tree: Callable[..., ModelTree],
) -> None:
    tree = meta_tree("resnet18", num_classes=3)
    launch = {"world_size": 2, "replicas_identical": False}
    diverged = Summary.of(facts(tree, distributed=launch, auto={"stages": []}))
    assert diverged.frozen_unchanged is False
    assert list(diverged.to_json())[-2:] == ["distributed", "auto"]
    released = Summary.of(facts(tree, events=[{"event": "unfreeze", "unchanged_until_event": False}]))
    assert released.frozen_unchanged is False and released.frozen_until_event_unchanged is False
    assert Summary.of(facts(tree, startup=(1.5, "process start"))).startup_from == "process start"


def test_a_summary_is_read_only(meta_tree: Callable[..., ModelTree]) -> None:
    summary = Summary.of(facts(meta_tree("resnet18", num_classes=3)))
    with pytest.raises(AttributeError):
        summary.epochs = 3  # type: ignore[misc]
