"""build_report over seeds, on run records made up so that every number is known: grouping,
the reference and its warning, paired differences, time to target, the Pareto front, the
config keys that differ."""

from __future__ import annotations

import copy

import pytest

from freezetune.config import ConfigError
from freezetune.record.summary import MEMORY_KINDS
from freezetune.report import (
    build_report,
    config_differences,
    markdown_table,
    outcome_table,
    parse_target,
    ranking_line,
    text_table,
    timing_line,
    unresolved_line,
)

CONFIG = {"name": "x", "seed": 0, "seeds": 1, "freeze": {"preset": "full"}, "train": {"epochs": 2, "output_dir": None}}


def record(
    name: str,
    seed: int,
    accs: list[float],
    secs: list[float],
    *,
    trainable: int = 100,
    memory: int = 1000,
    preset: str = "full",
    step: float | None = None,
) -> dict:
    """A finished run as load_run gives it: epoch ``i`` ends at ``secs[i]`` training seconds with ``accs[i]``;
    its median step ``step`` seconds (a tenth of its training seconds unless given)."""
    config = copy.deepcopy(CONFIG) | {"name": name, "seed": seed}
    config["freeze"]["preset"] = preset
    mem = {key: 0 for key, _ in MEMORY_KINDS} | {"grad_bytes": memory, "peak_bytes": 5 * memory, "peak_kind": "rss"}
    return {
        "name": name,
        "seed": seed,
        "run_dir": f"runs/{name}-seed{seed}",
        "params_trainable": trainable,
        "params_total": 100,
        "trainable_pct": trainable,
        "final_val_acc": accs[-1],
        "train_time_s": secs[-1],
        "wall_time_s": secs[-1] + 5,
        "speed": {
            "step_time_s": secs[-1] / 10 if step is None else step,
            "compute_time_s": secs[-1] / 20,
            **{f"{k}_s": 0.01 for k in ("data", "forward", "backward", "optimizer")},
            "train_samples_per_s": 100.0,
            "eval_samples_per_s": 300.0,
            "eval_speedup_no_grad": 1.5,
        },
        "memory": mem,
        "frozen_unchanged": True,
        "device": "cpu",
        "cache": {},
        "config": config,
        "metrics": [
            {"epoch": i + 1, "val_acc": a, "train_s": t, "epoch_time_s": t - (secs[i - 1] if i else 0.0)}
            for i, (a, t) in enumerate(zip(accs, secs))
        ],
        "schedule": [],
    }


def three_seeds(name: str, accs: list[float], secs: list[float], **kw) -> list[dict]:
    """Seeds 0, 1, 2: final accuracy accs[s], training seconds secs[s] (one epoch at half of each)."""
    return [record(name, s, [a / 2, a], [t / 2, t], **kw) for s, (a, t) in enumerate(zip(accs, secs))]


@pytest.fixture()
def runs() -> list[dict]:
    probe = three_seeds("probe", [0.70, 0.72, 0.71], [2.0, 2.2, 2.1], trainable=1, memory=10, preset="linear_probe")
    full = three_seeds("full", [0.90, 0.91, 0.92], [10.0, 11.0, 12.0])
    mid = three_seeds("mid", [0.905, 0.905, 0.925], [6.0, 6.0, 6.0], trainable=50, memory=500, preset="until:layer3")
    return probe + full + mid


def row(report: dict, name: str) -> dict:
    return next(r for r in report["rows"] if r["config"] == name)


def test_seeds_are_pooled_per_config_in_the_order_given(runs: list[dict]) -> None:
    report = build_report(list(reversed(runs[:3])) + runs[3:])
    assert [r["config"] for r in report["rows"]] == ["probe", "full", "mid"]
    probe = row(report, "probe")
    assert probe["seeds"] == [0, 1, 2] and probe["run_dirs"][0] == "runs/probe-seed0"  # sorted by seed
    acc = probe["stats"]["val_acc"]
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.71) and acc["std"] == pytest.approx(0.01)
    assert acc["high"] - acc["mean"] == pytest.approx(4.3027 * 0.01 / 3**0.5, abs=1e-5)
    assert probe["train_time_s"] == pytest.approx(2.1) and probe["train_time_ratio"] == pytest.approx(2.1 / 11)


def test_the_reference_is_the_config_that_trains_every_parameter_even_when_not_first(runs: list[dict]) -> None:
    report = build_report(runs)
    assert (report["reference"], report["reference_why"]) == ("full", "trains every parameter")
    assert report["reference_fallback"] is False
    assert "vs_reference" not in row(report, "full")
    d = row(report, "probe")["vs_reference"]["val_acc"]
    # Per seed: -0.20, -0.19, -0.21: resolved; paired.
    assert d["method"] == "paired" and d["mean"] == pytest.approx(-0.20) and d["resolved"]
    m = row(report, "mid")["vs_reference"]["val_acc"]
    # Per seed: +0.005, -0.005, +0.005: the interval holds 0.
    assert m["low"] < 0 < m["high"] and not m["resolved"]
    assert unresolved_line(report) == "accuracy differences to full not resolved by these runs: mid"
    t = row(report, "mid")["vs_reference"]["train_time_s"]
    assert t["mean"] == pytest.approx(-5.0) and t["resolved"]  # -4, -5, -6 seconds


def test_reference_named_explicitly(runs: list[dict]) -> None:
    report = build_report(runs, reference="probe")
    assert (report["reference"], report["reference_why"]) == ("probe", "chosen with --reference")
    assert report["reference_fallback"] is False
    assert row(report, "full")["vs_reference"]["val_acc"]["mean"] == pytest.approx(0.20)
    with pytest.raises(ConfigError, match="--reference nope: no such config among the runs; choose one of probe"):
        build_report(runs, reference="nope")


def test_without_a_full_run_the_report_says_so_instead_of_silently_taking_the_first(runs: list[dict]) -> None:
    partial = [r for r in runs if r["name"] != "full"]
    report = build_report(partial)
    assert report["reference"] == "probe"  # the first given, and said
    assert report["reference_why"].startswith("NO config trains every parameter")
    assert report["reference_fallback"] is True
    assert "--reference NAME" in report["reference_why"]


def test_time_to_target_counts_the_seeds_that_reach_it(runs: list[dict]) -> None:
    report = build_report(runs, target="0.7")
    assert report["target_acc"] == 0.7 and report["target_rule"] == "--target-acc"
    probe = row(report, "probe")["time_to_target"]
    # Seeds 0, 1, 2 reach 0.70, 0.72, 0.71 at their last epoch end (2.0, 2.2, 2.1 s).
    assert (probe["reached"], probe["n"]) == (3, 3) and probe["seconds"]["mean"] == pytest.approx(2.1)
    report = build_report(runs)  # default: 95% of the reference's mean final accuracy, 0.8645
    assert report["target_acc"] == pytest.approx(0.95 * 0.91)
    assert "95% of full's mean final accuracy (0.9100)" in report["target_rule"]
    assert row(report, "probe")["time_to_target"] == {
        "reached": 0,
        "n": 3,
        "seconds": None,
        "per_seed": {"0": None, "1": None, "2": None},
    }
    assert row(report, "full")["time_to_target"]["seconds"]["mean"] == pytest.approx(11.0)
    table = outcome_table(report).splitlines()
    assert "| time to 0.864 |" in table[0]
    assert "| not reached (0/3) |" in table[2] and "| 11.0 ± 2.5 s (3/3) |" in table[3]  # probe, full


def test_target_spellings() -> None:
    assert parse_target("0.85") == ("accuracy", 0.85)
    assert parse_target("95%") == ("reference", 0.95)
    assert parse_target(" 100% ") == ("reference", 1.0)
    for bad in ("85", "0", "-0.1", "120%", "abc", "%"):
        with pytest.raises(ValueError, match="give an accuracy in"):
            parse_target(bad)


def test_pareto_fronts_on_time_and_on_memory(runs: list[dict]) -> None:
    report = build_report(runs)
    # Time: probe 2.1 s / 0.71, mid 6 s / 0.9117, full 11 s / 0.91: full is slower and less accurate than mid.
    assert {r["config"]: r["pareto"]["time"] for r in report["rows"]} == {"probe": True, "full": False, "mid": True}
    assert {r["config"]: r["pareto"]["memory"] for r in report["rows"]} == {"probe": True, "full": False, "mid": True}


def test_learning_curve_means_over_seeds(runs: list[dict]) -> None:
    curve = row(build_report(runs), "full")["curve"]
    assert [p["epoch"] for p in curve] == [1, 2]
    assert curve[1]["train_s"] == pytest.approx(11.0) and curve[1]["val_acc"] == pytest.approx(0.91)
    assert (curve[0]["val_acc_min"], curve[0]["val_acc_max"]) == (0.45, 0.46)


def test_a_config_missing_seeds_is_compared_unpaired_or_not_at_all(runs: list[dict]) -> None:
    one = [r for r in runs if not (r["name"] == "probe" and r["seed"] > 0)]
    d = row(build_report(one), "probe")["vs_reference"]["val_acc"]
    assert d["method"] == "none" and d["low"] is None and not d["resolved"]
    shifted = [r | {"seed": r["seed"] + 10} if r["name"] == "probe" else r for r in runs]
    assert row(build_report(shifted), "probe")["vs_reference"]["val_acc"]["method"] == "welch"


def test_one_seed_given_twice_or_two_configs_under_one_name_are_refused(runs: list[dict]) -> None:
    twice = runs + [runs[0] | {"run_dir": "elsewhere/probe"}]
    with pytest.raises(ConfigError, match="runs/probe-seed0 and elsewhere/probe are both probe with seed 0"):
        build_report(twice)
    other = copy.deepcopy(runs[1])
    other["config"]["train"]["epochs"] = 5
    with pytest.raises(ConfigError, match=r"both named probe but their configs differ in train\.epochs"):
        build_report([runs[0], other])


def test_config_differences_lists_each_key_with_every_configs_value() -> None:
    a = {"name": "a", "seed": 0, "train": {"epochs": 2, "optimizer": {"lr": 0.1}, "output_dir": "x"}, "tags": []}
    b = {"name": "b", "seed": 3, "train": {"epochs": 2, "optimizer": {"lr": 0.05}, "output_dir": "y"}}
    assert config_differences({"a": a, "b": b}) == {
        "tags": {"a": [], "b": None},
        "train.optimizer.lr": {"a": 0.1, "b": 0.05},
    }  # name, seed and the folder differ by design: not listed
    assert config_differences({"a": a, "a2": a}) == {}
    assert config_differences({"a": a}) == {}


def test_ranking_marks_each_neighbour_resolved_or_not_and_leaves_single_runs_out(runs: list[dict]) -> None:
    lone = record("lone", 0, [0.5, 0.99], [1.0, 2.0])  # the best mean, but one run: no interval
    report = build_report(runs + [lone])
    rank = report["ranking"]
    assert rank["order"] == ["mid", "full", "probe"] and rank["left_out"] == ["lone"]
    assert rank["text"] == "mid ≈ full > probe"  # mid - full holds 0; full - probe is -0.20 [..] resolved
    assert [(p["better"], p["worse"], p["resolved"]) for p in rank["pairs"]] == [
        ("mid", "full", False),
        ("full", "probe", True),
    ]
    assert ranking_line(report) == (
        "ranking by final accuracy (> resolved, ≈ not resolved by these seeds): mid ≈ full > probe; "
        "one run, left out: lone"
    )


def test_predictions_are_taken_against_the_reference_whatever_it_is(runs: list[dict]) -> None:
    estimates = {  # each against full fine-tuning, as the cost model gives them
        "full": {"predicted_step_ratio": 1.0, "predicted_saved_ratio": 1.0},
        "probe": {"predicted_step_ratio": 0.1, "predicted_saved_ratio": 0.0},
        "mid": {"predicted_step_ratio": 0.5, "predicted_saved_ratio": 0.2},
    }
    report = build_report(runs, estimates, reference="mid")
    assert row(report, "full")["predicted_step_ratio"] == pytest.approx(2.0)
    assert row(report, "probe")["predicted_step_ratio"] == pytest.approx(0.2)
    # Measured compute: full 11/20 s, mid 6/20 s: 1.833 against mid; the error compares like with like.
    assert row(report, "full")["predicted_step_error"] == pytest.approx(2.0 / (11 / 6) - 1)
    del estimates["mid"]  # a reference without a prediction: no predicted column at all
    assert all("predicted_step_ratio" not in r for r in build_report(runs, estimates, reference="mid")["rows"])


def test_runs_validated_on_other_data_are_compared_with_a_warning(runs: list[dict]) -> None:
    assert build_report(runs)["warnings"] == []
    other = copy.deepcopy(runs[:3])
    for r in other:
        r["config"]["data"] = {"classes": [0, 1]}
    report = build_report(other + runs[3:])
    assert report["warnings"] == [
        "the runs differ in data.classes: they were validated on different data, "
        "so their accuracies (and the differences between them) are not comparable"
    ]


def test_a_run_whose_trainable_set_changed_shows_where_it_started(runs: list[dict]) -> None:
    changed = copy.deepcopy(runs[3:6])  # full, whose last phase trains 1 of 100 parameters
    for r in changed:
        r["params_trainable"], r["trainable_pct"] = 1, 1.0
        r["metrics"][0]["trainable_params"], r["metrics"][1]["trainable_params"] = 100, 1
    report = build_report(runs[:3] + changed)
    assert "| 1 (100.00% → 1.00%) |" in markdown_table(report)
    assert "| 1 (1.00%) |" in markdown_table(report)  # the probe: unchanged, one share


def test_events_that_differ_by_seed_are_labelled_with_the_seed_they_come_from(runs: list[dict]) -> None:
    full = copy.deepcopy(runs[3:6])
    for r, epoch in zip(full, (3, 3, 4)):
        r["schedule"] = [
            {"epoch": epoch, "event": "freeze", "target": "conv1"},
            {"epoch": epoch, "event": "freeze", "target": "bn1"},
        ]
    assert row(build_report(runs[:3] + full), "full")["events"] == [{"epoch": 3, "label": "freeze conv1, bn1 (seed 0)"}]
    for r in full:
        r["schedule"][0]["epoch"] = r["schedule"][1]["epoch"] = 3
    assert row(build_report(runs[:3] + full), "full")["events"] == [{"epoch": 3, "label": "freeze conv1, bn1"}]


# --------------------------------------------------------------------------- timing on a noisy machine


@pytest.fixture()
def noisy() -> list[dict]:
    """Two configs on a shared machine: seed 1's pair of runs ran under load, 3.5 times slower in
    total seconds, while the median steps inside each run moved by a third, alike for both."""
    full_s, probe_s = [40.0, 140.0, 48.0], [12.0, 45.0, 14.0]
    full_step, probe_step = [0.100, 0.130, 0.110], [0.025, 0.033, 0.0272]
    full = [record("full", s, [0.5, 0.9], [t / 2, t], step=full_step[s]) for s, t in enumerate(full_s)]
    probe = [
        record("probe", s, [0.4, 0.7], [t / 2, t], trainable=1, memory=10, preset="linear_probe", step=probe_step[s])
        for s, t in enumerate(probe_s)
    ]
    return probe + full


def test_the_step_ratio_from_each_runs_median_leads_and_holds_on_a_noisy_machine(noisy: list[dict]) -> None:
    report = build_report(noisy)
    vs = row(report, "probe")["vs_reference"]
    step = vs["step_time_ratio"]
    # Per seed 0.25, 0.2538, 0.2473: their geometric mean, resolved (the interval excludes 1), while the
    # total seconds vary by three quarters of their mean.
    assert step["method"] == "paired" and step["resolved"]
    assert step["mean"] == pytest.approx((0.25 * (0.033 / 0.13) * (0.0272 / 0.11)) ** (1 / 3))
    assert 0.24 < step["low"] < step["mean"] < step["high"] < 0.26
    assert vs["compute_time_ratio"]["n"] == 3
    assert set(vs) >= {"val_acc", "train_time_s", "training_memory_bytes"}  # report.json's earlier keys stay
    headers = outcome_table(report).splitlines()[0].split(" | ")
    assert headers.index("step × full (95% CI)") < headers.index("train s") < headers.index("train s × full")
    assert "| 0.250 [0.242, 0.259] resolved |" in outcome_table(report)
    console = text_table(report).splitlines()
    assert console[0].index("step × [95% CI]") < console[0].index("train s")
    assert "0.250 [0.242, 0.259] *" in console[2]


def test_a_noisy_wall_time_is_unresolved_and_its_interval_not_printed(noisy: list[dict]) -> None:
    report = build_report(noisy)
    probe = row(report, "probe")
    wall = probe["vs_reference"]["train_time_s"]
    assert wall["verdict"] == "unresolved (noise)" and wall["low"] is not None  # report.json keeps the interval
    assert report["timing"] == {"max_spread": 0.10, "noisy": ["probe", "full"]}
    assert probe["time_spread"] == pytest.approx(0.7818, abs=1e-4)  # per epoch 6, 22.5, 7 s: std 9.25, mean 11.83
    line = next(x for x in outcome_table(report).splitlines() if x.startswith("| `probe` |"))
    assert "| -52.3 unresolved (noise) |" in line  # the mean, its interval left out
    assert "| 23.7 ± 46.0 (noisy: CV 78%) |" in line
    full = next(x for x in outcome_table(report).splitlines() if x.startswith("| `full` |"))
    assert "| 76.0 ± 138.0 s (3/3) noisy |" in full  # its time to the target is training seconds too
    assert timing_line(report) == (
        "training-time differences to full unresolved (noise): probe; training seconds per epoch varied across "
        "seeds beyond 10% of their mean (probe 78%, full 73%): the machine was noisy, read step × (medians inside "
        "each run)"
    )


def test_a_steady_wall_time_stays_resolved(runs: list[dict]) -> None:
    report = build_report(runs)
    assert report["timing"]["noisy"] == []
    for name, interval in (("probe", "-8.9 [-11.3, -6.5] resolved"), ("mid", "-5.0 [-7.5, -2.5] resolved")):
        assert row(report, name)["vs_reference"]["train_time_s"]["verdict"] == "resolved"
        assert f"| {interval} |" in next(x for x in outcome_table(report).splitlines() if f"`{name}`" in x)
    assert timing_line(report) == "training-time differences to full unresolved (noise): none"
    assert "noisy" not in outcome_table(report) and "noisy" not in text_table(report)


def test_seeds_that_stopped_at_different_epochs_are_not_noise(runs: list[dict]) -> None:
    # 5 s per epoch for every seed; early stopping ended seed 1 after three epochs: 10, 15, 10 s in all.
    stopped = [
        record("full", s, [0.5] * (n - 1) + [0.9], [5.0 * (i + 1) for i in range(n)]) for s, n in enumerate((2, 3, 2))
    ]
    report = build_report(runs[:3] + stopped)
    assert row(report, "full")["time_spread"] == 0.0 and report["timing"]["noisy"] == []
