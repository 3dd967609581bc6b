"""Compare finished runs: one row per config, its seeds pooled.

Runs are grouped by config name (the seeds of one config share it). Each row holds the means
of the measured numbers, the 95% intervals over seeds, and each metric's difference to the
reference config with its interval (freezetune.report.stats). The step ratio to the reference
leads: per seed, the config's median step over the reference's, both measured inside their runs,
pooled over seeds with its interval; wall-time differences carry a verdict, unresolved when the
machine's noise swamps them. The other ratios (×) are means over means. The reference is
``--reference NAME``, else the config that trains every parameter, else the first config given,
and the report says which and why.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from freezetune.config import ConfigError
from freezetune.record import read_jsonl
from freezetune.record.summary import MEMORY_KINDS
from freezetune.report.stats import (
    MAX_TIME_SPREAD,
    difference,
    pareto_front,
    spread,
    summarize,
    time_to_target,
    wall_time_verdict,
)
from freezetune.report.stats import ratio as paired_ratio

__all__ = [
    "DEFAULT_TARGET",
    "MEMORY_KINDS",
    "build_report",
    "config_differences",
    "ranking",
    "load_run",
    "parse_target",
    "run_curve",
]

MIN_RATIO_FOR_ERROR = 0.01
DEFAULT_TARGET = "95%"
# Memory that freezing can remove: everything but the weights themselves.
_TRAINING_KINDS = ("grad_bytes", "optimizer_state_bytes", "saved_activation_bytes")
# Keys that differ between the runs of one config by design, or name the run only.
_RUN_KEYS = ("name", "seed", "seeds", "train.output_dir")


def load_run(path: str | Path) -> dict[str, Any]:
    """A run folder's summary.json, with its folder, its config (``config.yaml``) and its
    per-epoch rows (``metrics.jsonl``) added; ConfigError for a folder that holds no finished run."""
    path = Path(path)
    if not (path / "summary.json").is_file():
        if (path / "FAILED").is_file():
            reason = (path / "FAILED").read_text().splitlines()[0]
            raise ConfigError([f"{path} holds a run that failed ({reason}): it has no results to compare"])
        what = (
            "no such folder"
            if not path.exists()
            else "a file, not a run folder"
            if path.is_file()
            else "no finished run there (no summary.json)"
        )
        raise ConfigError([f"{path}: {what}"])
    summary = json.loads((path / "summary.json").read_text())
    summary["run_dir"] = str(path)
    config = path / "config.yaml"
    summary["config"] = yaml.safe_load(config.read_text()) if config.is_file() else {}
    metrics = path / "metrics.jsonl"
    summary["metrics"] = read_jsonl(metrics) if metrics.is_file() else []
    # Runs from before summary.json had a seed: their config says it.
    summary.setdefault("seed", summary["config"].get("seed", 0))
    return summary


def run_curve(run: dict[str, Any]) -> list[tuple[float, float]]:
    """(cumulative training seconds, validation accuracy) at each epoch end. Runs recorded
    before ``train_s`` existed: the cumulative epoch times (their cache builds left out)."""
    curve, total = [], 0.0
    for row in run.get("metrics", []):
        total += row["epoch_time_s"]
        curve.append((row.get("train_s", total), row["val_acc"]))
    return curve


def _train_time(run: dict[str, Any]) -> float:
    if "train_time_s" in run:
        return run["train_time_s"]
    curve = run_curve(run)
    return curve[-1][0] if curve else run["wall_time_s"]


def parse_target(text: str) -> tuple[str, float]:
    """``--target-acc``: ``0.85`` is an accuracy, ``95%`` that share of the reference's mean
    final accuracy. Returns (``"accuracy"`` or ``"reference"``, the number); ValueError otherwise."""
    text = str(text).strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1]) / 100
            if 0 < value <= 1:
                return "reference", value
        else:
            value = float(text)
            if 0 < value <= 1:
                return "accuracy", value
    except ValueError:
        pass
    raise ValueError(f"{text!r}: give an accuracy in (0, 1] (0.85) or a share of the reference's in (0, 100%] (95%)")


def build_report(
    runs: list[dict[str, Any]],
    estimates: dict[str, dict] | None = None,
    reference: str | None = None,
    target: str = DEFAULT_TARGET,
) -> dict[str, Any]:
    """One row per config (its runs pooled over seeds), with means, 95% intervals and
    differences to the reference config; ConfigError for an unknown ``reference`` or runs of
    one name trained from different configs."""
    estimates = estimates or {}
    groups = _group(runs)
    ref_name, why, fallback = _reference(groups, reference)
    ref = groups[ref_name]
    kind, value = parse_target(target)
    ref_acc = summarize([r["final_val_acc"] for r in ref]).mean
    target_acc = value * ref_acc if kind == "reference" else value
    target_rule = (
        f"{100 * value:g}% of {ref_name}'s mean final accuracy ({ref_acc:.4f})"
        if kind == "reference"
        else "--target-acc"
    )
    differences = config_differences({name: rs[0].get("config", {}) for name, rs in groups.items()})
    means = {name: _means(rs) for name, rs in groups.items()}
    rm = means[ref_name]
    rows = []
    for name, rs in groups.items():
        m = means[name]
        row = _row(rs, m, rm, target_acc)
        if name != ref_name:
            row["vs_reference"] = _vs_reference(rs, ref)
        rows.append(row)
    _predictions(rows, estimates, ref_name)
    time_front = pareto_front([(r["train_time_s"], r["val_acc"]) for r in rows])
    memory_front = pareto_front([(r["training_memory_bytes"], r["val_acc"]) for r in rows])
    for row, on_time, on_memory in zip(rows, time_front, memory_front):
        row["pareto"] = {"time": on_time, "memory": on_memory}
    return {
        "reference": ref_name,
        "reference_why": why,
        # No config trains every parameter and none was chosen: the first one given stands in, which
        # the CLI warns about (a flag, so that no caller parses reference_why's wording).
        "reference_fallback": fallback,
        "device": _device_name(ref[0]["device"]),
        "target_acc": target_acc,
        "target_rule": target_rule,
        "config_differences": differences,
        "warnings": _warnings(differences),
        "ranking": ranking(groups),
        "rows": rows,
        "timing": _timing(rows),
    }


def _vs_reference(runs: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's paired difference to the reference; the wall-time one with its verdict
    (stats.wall_time_verdict); the step and compute ratios from each run's own medians."""
    vs: dict[str, Any] = {
        metric: difference(_by_seed(runs, metric), _by_seed(ref, metric)).to_json() for metric in _COMPARED
    }
    wall = difference(_by_seed(runs, "train_time_s"), _by_seed(ref, "train_time_s"))
    vs["train_time_s"]["verdict"] = wall_time_verdict(wall, [_time_spread(runs), _time_spread(ref)])
    for name, key in (("step_time_ratio", "step_time_s"), ("compute_time_ratio", "compute_time_s")):
        pooled = _speed_ratio(runs, ref, key)
        if pooled is not None:
            vs[name] = pooled
    return vs


def _speed_ratio(runs: list[dict[str, Any]], ref: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The ratio of ``speed[key]`` (a median over a run's steps after warm-up) to the reference's,
    paired by seed and pooled (stats.ratio). A median is what one run measured under its own
    conditions, steady where the run's total seconds are not: a burst of load moves a few steps,
    not the median. None when a run lacks the median (a run too short to time a step)."""
    values, reference = _speed_by_seed(runs, key), _speed_by_seed(ref, key)
    if values is None or reference is None:
        return None
    return paired_ratio(values, reference).to_json()


def _speed_by_seed(runs: list[dict[str, Any]], key: str) -> dict[int, float] | None:
    values = {r["seed"]: r["speed"].get(key) for r in runs}
    if any(v is None or v <= 0 for v in values.values()):
        return None
    return values


def _time_spread(runs: list[dict[str, Any]]) -> float | None:
    """The spread (coefficient of variation) of a config's training seconds per epoch across its
    seeds: per epoch, so that seeds that early stopping ended at different epochs compare."""
    # metrics.jsonl has a row per epoch run; a run loaded without it says its epochs in summary.json.
    epochs = [len(r.get("metrics") or []) or r.get("epochs", 1) for r in runs]
    return spread([_train_time(r) / max(1, n) for r, n in zip(runs, epochs)])


def _timing(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """report.json's ``timing``: the rule's bound, and the configs whose training seconds vary
    across seeds beyond it (their wall-time differences are unresolved whatever the interval)."""
    return {
        "max_spread": MAX_TIME_SPREAD,
        "noisy": [r["config"] for r in rows if r["time_spread"] is not None and r["time_spread"] > MAX_TIME_SPREAD],
    }


# Keys whose difference makes accuracies incomparable: another dataset, other classes, another validation set.
_DATA_KEYS = ("data.dataset", "data.root", "data.classes", "data.val_samples")


def _warnings(differences: dict[str, dict[str, Any]]) -> list[str]:
    keys = [k for k in _DATA_KEYS if k in differences]
    if not keys:
        return []
    return [
        f"the runs differ in {', '.join(keys)}: they were validated on different data, "
        "so their accuracies (and the differences between them) are not comparable"
    ]


def ranking(groups: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The configs with two runs or more, by mean final accuracy, best first, and between each
    neighbour and the next whether the difference is resolved (``>``) or not (``≈``), by the same
    paired test as the differences to the reference. Configs of one run have no interval: they
    are listed apart."""
    ranked = sorted(
        (name for name, rs in groups.items() if len(rs) > 1),
        key=lambda n: -summarize([r["final_val_acc"] for r in groups[n]]).mean,
    )
    pairs = [
        difference(_by_seed(groups[a], "val_acc"), _by_seed(groups[b], "val_acc")) for a, b in zip(ranked, ranked[1:])
    ]
    order = ranked[:1]
    for name, d in zip(ranked[1:], pairs):
        order += [">" if d.resolved else "≈", name]
    return {
        "order": ranked,
        "text": " ".join(order),
        "pairs": [d.to_json() | {"better": a, "worse": b} for (a, b), d in zip(zip(ranked, ranked[1:]), pairs)],
        "left_out": [name for name, rs in groups.items() if len(rs) == 1],
    }


def _training_memory(run: dict[str, Any]) -> float:
    """What freezing can remove from one step's memory: gradients, optimizer state, saved activations."""
    return sum(run["memory"][k] for k in _TRAINING_KINDS)


# Each metric's difference to the reference, per seed: accuracy, what the run paid for it.
_COMPARED = {
    "val_acc": lambda r: r["final_val_acc"],
    "train_time_s": _train_time,
    "training_memory_bytes": _training_memory,
}


def _by_seed(runs: list[dict[str, Any]], metric: str) -> dict[int, float]:
    return {r["seed"]: _COMPARED[metric](r) for r in runs}


def _group(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by config name, in the order first given, each group's seeds in order; the runs
    of one name must come from one config (seed, seeds and the folder aside) and differ in seed."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["name"], []).append(r)
    for name, rs in groups.items():
        first, seen = rs[0], {}
        for r in rs:
            if r["seed"] in seen:
                raise ConfigError(
                    [
                        f"{seen[r['seed']]} and {r['run_dir']} are both {name} with seed {r['seed']}: "
                        "give each run of a config once"
                    ]
                )
            seen[r["seed"]] = r["run_dir"]
            keys = config_differences({"a": first.get("config", {}), "b": r.get("config", {})})
            if keys:
                raise ConfigError(
                    [
                        f"{first['run_dir']} and {r['run_dir']} are both named {name} but their configs differ "
                        f"in {', '.join(sorted(keys))}: give the configs different names to compare them"
                    ]
                )
        rs.sort(key=lambda r: r["seed"])
    return groups


def _reference(groups: dict[str, list[dict[str, Any]]], chosen: str | None) -> tuple[str, str, bool]:
    """The reference config, why it is, and whether it only stands in (the first one given)."""
    if chosen is not None:
        if chosen not in groups:
            raise ConfigError(
                [f"--reference {chosen}: no such config among the runs; choose one of {', '.join(groups)}"]
            )
        return chosen, "chosen with --reference", False
    full = [n for n, rs in groups.items() if rs[0]["params_trainable"] == rs[0]["params_total"]]
    if full:
        why = "trains every parameter" + (f" (the first of {len(full)} that do)" if len(full) > 1 else "")
        return full[0], why, False
    first = next(iter(groups))
    why = (
        "NO config trains every parameter, so ratios and differences are against the first config given; "
        "choose the reference with --reference NAME"
    )
    return first, why, True


def config_differences(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The config keys (dotted) whose values differ between ``configs`` (name: resolved config
    tree), each with every config's value (None where a config lacks the key); the keys that
    name a run or its seed are left out."""
    flat = {name: _flatten(tree) for name, tree in configs.items()}
    keys = sorted({k for f in flat.values() for k in f} - set(_RUN_KEYS))
    out = {}
    for key in keys:
        values = {name: f.get(key) for name, f in flat.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            out[key] = values
    return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _means(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over a config's runs of every measured number the row shows."""

    def mean(get: Any) -> float:
        return math.fsum(get(r) for r in runs) / len(runs)

    def mean_measured(key: str) -> float | None:
        """None when a run did not measure it (train.measure off, or an older run without it)."""
        values = [r["speed"].get(key) for r in runs]
        return None if None in values else math.fsum(values) / len(values)

    return {
        "step_time_s": mean(lambda r: r["speed"]["step_time_s"]),
        "compute_time_s": mean(lambda r: r["speed"]["compute_time_s"]),
        "phases_s": {
            k: mean(lambda r, k=k: r["speed"][f"{k}_s"]) for k in ("data", "forward", "backward", "optimizer")
        },
        "train_samples_per_s": mean(lambda r: r["speed"]["train_samples_per_s"]),
        "eval_samples_per_s": mean_measured("eval_samples_per_s"),
        "eval_speedup_no_grad": mean_measured("eval_speedup_no_grad"),
        "memory_bytes": {k: mean(lambda r, k=k: r["memory"][k]) for k, _ in MEMORY_KINDS},
        "training_memory_bytes": mean(_training_memory),
        "saved_activation_bytes": mean(lambda r: r["memory"]["saved_activation_bytes"]),
        "peak_bytes": mean(lambda r: r["memory"]["peak_bytes"]),
        "train_time_s": mean(_train_time),
    }


def _row(runs: list[dict[str, Any]], m: dict[str, Any], rm: dict[str, Any], target_acc: float) -> dict[str, Any]:
    first = runs[0]
    cache = first.get("cache") or {}
    cached = bool(cache.get("used"))

    def ratio(a: float, b: float) -> float:
        return a / b if b else 1.0

    accs, train_s = [r["final_val_acc"] for r in runs], [_train_time(r) for r in runs]
    acc = summarize(accs)
    per_seed = {r["seed"]: time_to_target(run_curve(r), target_acc) for r in runs}
    reached = [t for t in per_seed.values() if t is not None]
    return {
        "config": first["name"],
        "run_dirs": [r["run_dir"] for r in runs],
        "seeds": [r["seed"] for r in runs],
        "params_trainable": first["params_trainable"],
        "trainable_pct": first["trainable_pct"],
        # A run whose trainable set changed (a schedule, auto) started elsewhere: its first epoch's share.
        "trainable_pct_start": 100.0 * first["metrics"][0]["trainable_params"] / first["params_total"]
        if first.get("metrics") and "trainable_params" in first["metrics"][0]
        else first["trainable_pct"],
        "val_acc": acc.mean,
        "per_seed_acc": accs,
        "per_seed_train_s": train_s,
        "stats": {
            "val_acc": acc.to_json(),
            "train_time_s": summarize(train_s).to_json(),
            "step_time_s": summarize([r["speed"]["step_time_s"] for r in runs]).to_json(),
            "training_memory_bytes": summarize([_training_memory(r) for r in runs]).to_json(),
            "peak_bytes": summarize([r["memory"]["peak_bytes"] for r in runs]).to_json(),
        },
        "train_time_s": m["train_time_s"],
        "time_spread": _time_spread(runs),
        "train_time_ratio": ratio(m["train_time_s"], rm["train_time_s"]),
        "step_time_s": m["step_time_s"],
        "step_ratio": ratio(m["step_time_s"], rm["step_time_s"]),
        "compute_time_s": m["compute_time_s"],
        "compute_ratio": ratio(m["compute_time_s"], rm["compute_time_s"]),
        "phases_s": m["phases_s"],
        "train_samples_per_s": m["train_samples_per_s"],
        "eval_samples_per_s": m["eval_samples_per_s"],
        "eval_speedup_no_grad": m["eval_speedup_no_grad"],
        # Written by the runner since train.precision exists; every earlier run trained in fp32.
        "precision": first["speed"].get("precision", "fp32"),
        "channels_last": bool(first["speed"].get("channels_last", False)),
        "memory_bytes": m["memory_bytes"],
        "training_memory_bytes": m["training_memory_bytes"],
        "training_memory_ratio": ratio(m["training_memory_bytes"], rm["training_memory_bytes"]),
        "saved_ratio": ratio(m["saved_activation_bytes"], rm["saved_activation_bytes"]),
        "peak_bytes": m["peak_bytes"],
        "peak_kind": first["memory"]["peak_kind"],
        "peak_ratio": ratio(m["peak_bytes"], rm["peak_bytes"]),
        "frozen_unchanged": all(r["frozen_unchanged"] for r in runs),
        "device": first["device"],
        "cached": cached,
        "cache_bytes": cache.get("bytes", 0) if cached else 0,
        "cache_build_s": math.fsum((r.get("cache") or {}).get("build_s", 0.0) for r in runs) / len(runs)
        if cached
        else 0.0,
        "time_to_target": {
            "reached": len(reached),
            "n": len(runs),
            "seconds": summarize(reached).to_json() if reached else None,
            "per_seed": {str(s): t for s, t in per_seed.items()},
        },
        "curve": _mean_curve(runs),
        # Where the trainable set changed: drawn on the learning curve (acting from epoch N's start).
        # A run that decides its own schedule (auto) may differ by seed: the first seed's, said so.
        "events": _events(first)
        if all(_events(r) == _events(first) for r in runs)
        else [e | {"label": f"{e['label']} (seed {first['seed']})"} for e in _events(first)],
        "auto": bool(first.get("auto")),
    }


def _events(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The schedule's events by epoch, one label each ("freeze conv1, bn1, layer1")."""
    by_epoch: dict[tuple[int, str], list[str]] = {}
    for e in run.get("schedule", []):
        if e.get("event") in ("freeze", "unfreeze") and e.get("epoch", 1) > 1:
            by_epoch.setdefault((e["epoch"], e["event"]), []).append(str(e.get("target", "")))
    return [{"epoch": epoch, "label": f"{kind} {', '.join(targets)}"} for (epoch, kind), targets in by_epoch.items()]


def _mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch: the mean training seconds and the accuracy's mean and spread over the runs
    that reached that epoch (early stopping can end seeds at different epochs)."""
    curves = [run_curve(r) for r in runs]
    out = []
    for i in range(max((len(c) for c in curves), default=0)):
        points = [c[i] for c in curves if len(c) > i]
        acc = summarize([a for _, a in points])
        out.append(
            {
                "epoch": i + 1,
                "n": len(points),
                "train_s": math.fsum(t for t, _ in points) / len(points),
                "val_acc": acc.mean,
                "val_acc_std": acc.std,
                "val_acc_min": min(a for _, a in points),
                "val_acc_max": max(a for _, a in points),
            }
        )
    return out


def _predictions(rows: list[dict[str, Any]], estimates: dict[str, dict], ref_name: str) -> None:
    """The cost model's predicted step ratio against the reference, beside the measured one.
    A prediction is against full fine-tuning (its profile's full step); against another
    reference it is the ratio of the two predictions, and none when the reference has none."""
    ref_row = next(r for r in rows if r["config"] == ref_name)

    def predicted(row: dict[str, Any]) -> float | None:
        est = estimates.get(row["config"])
        if not est:
            return None
        return _cached_ratio(est) if row["cached"] else est["predicted_step_ratio"]

    ref_pred = predicted(ref_row)
    for row in rows:
        pred = predicted(row)
        if pred is None or not ref_pred:
            continue
        row["predicted_step_ratio"] = pred / ref_pred
        # Below 1% of the reference a step is tens of microseconds, finer than the profile's
        # per-module hooks resolve: a relative error there means nothing.
        if row["compute_ratio"] >= MIN_RATIO_FOR_ERROR:
            row["predicted_step_error"] = row["predicted_step_ratio"] / row["compute_ratio"] - 1.0
        row["predicted_saved_ratio"] = estimates[row["config"]]["predicted_saved_ratio"]


def _cached_ratio(est: dict) -> float:
    """With the feature cache a step no longer runs the frozen prefix at all."""
    prefix = 0.0
    for m in est["modules"]:
        if m["state"] not in ("no graph", "no params"):
            break
        prefix += m["forward_s"]
    return (est["predicted_step_s"] - prefix) / est["predicted_full_step_s"]


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name()})"
    return f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
