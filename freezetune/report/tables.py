"""The comparison as people read it: report.md (with its plots), report.json and the
console table, from freezetune.report.report.build_report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from freezetune.record import atomic_write_bytes
from freezetune.record.summary import MEMORY_KINDS
from freezetune.report.plot import MiB, plot_curves, plot_report, plot_tradeoff
from freezetune.utils import format_bytes, format_table
from freezetune.utils.files import make_folder

__all__ = [
    "STATS_NOTE",
    "TIMING_NOTE",
    "markdown_table",
    "outcome_table",
    "ranking_line",
    "reference_line",
    "text_table",
    "timing_line",
    "unresolved_line",
    "write_report",
]

STATS_NOTE = (
    "Values are means over a config's seeds, `± h` the half-width of their 95% Student-t interval. "
    "A difference to the reference is taken per seed (runs with the same seed share the data subset, "
    "its order and the new head's initialization, so pairing them cancels what the seed does to both) "
    "and its 95% t-interval is shown; it is **resolved** when that interval excludes 0. "
    "Configs with fewer than two seeds in common with the reference get Welch's unpaired interval "
    "instead (marked Welch); "
    "one run alone has no interval and is never resolved. Non-overlapping per-config intervals would be "
    "a stricter test that ignores the pairing; both intervals are in the table for the reader to check."
)

TIMING_NOTE = (
    "`step ×`: per seed, the config's median training step over the reference's (each a median over "
    "its run's steps after warm-up, measured under that run's own conditions), pooled over seeds as a "
    "geometric mean with its 95% paired interval; it is resolved when the interval excludes 1. It leads "
    "because a burst of load on a shared machine moves a run's total seconds, not its median step. "
    "A training-time difference is **unresolved (noise)**, its interval not shown, when either config's "
    "training seconds per epoch vary across seeds by more than {spread:.0%} of their mean (every seed "
    "does the same work: the rest is the machine), or when its interval holds 0."
)


def _pm(stat: dict[str, Any], fmt: str, scale: float = 1.0) -> str:
    """'mean ± half-width' of a Stat's JSON (the mean alone for one run)."""
    mean = format(stat["mean"] * scale, fmt)
    if stat["high"] is None:
        return mean
    return f"{mean} ± {format((stat['high'] - stat['mean']) * scale, fmt)}"


def _diff(d: dict[str, Any] | None, fmt: str, scale: float = 1.0, words: bool = True) -> str:
    """'+0.012 [+0.004, +0.020] resolved' for a Difference's JSON; '-' for the reference itself."""
    if d is None:
        return "(reference)" if words else "ref"
    mean = format(d["mean"] * scale, "+" + fmt)
    if d["low"] is None:
        return f"{mean} (no interval: 1 run)" if words else f"{mean} (1 run)"
    interval = f"[{format(d['low'] * scale, '+' + fmt)}, {format(d['high'] * scale, '+' + fmt)}]"
    unpaired = " Welch" if d["method"] == "welch" else ""  # no two seeds in common with the reference
    if words:
        return f"{mean} {interval}{unpaired} {'resolved' if d['resolved'] else 'not resolved'}"
    return f"{mean} {interval}{unpaired}{' *' if d['resolved'] else ''}"


def _ratio(vs: dict[str, Any], key: str, words: bool = True) -> str:
    """'0.243 [0.240, 0.246] resolved' for the Ratio's JSON under ``key`` of a row's
    ``vs_reference`` (resolved: the interval excludes 1); the reference itself has none, and a
    config whose runs lack the step median shows '-'."""
    if not vs:
        return "(reference)" if words else "ref"
    d = vs.get(key)
    if d is None:
        return "-"
    mean = f"{d['mean']:.3f}"
    if d["low"] is None:
        return f"{mean} (no interval: 1 run)" if words else f"{mean} (1 run)"
    interval = f"[{d['low']:.3f}, {d['high']:.3f}]"
    unpaired = " Welch" if d["method"] == "welch" else ""
    if words:
        return f"{mean} {interval}{unpaired} {'resolved' if d['resolved'] else 'not resolved'}"
    return f"{mean} {interval}{unpaired}{' *' if d['resolved'] else ''}"


def _wall_diff(d: dict[str, Any] | None, fmt: str) -> str:
    """A training-time difference as _diff writes it, but without its interval when the
    machine's noise swamps it (stats.wall_time_verdict): the interval would read as a finding."""
    if d is not None and d["verdict"] == "unresolved (noise)":
        return f"{format(d['mean'], '+' + fmt)} unresolved (noise)"
    return _diff(d, fmt)


def _train_s(report: dict[str, Any], row: dict[str, Any]) -> str:
    """A config's training seconds over seeds, marked noisy when they vary across seeds beyond
    the bound (report.json's timing.noisy)."""
    text = _pm(row["stats"]["train_time_s"], ".1f")
    if row["config"] not in report["timing"]["noisy"]:
        return text
    return f"{text} (noisy: CV {row['time_spread']:.0%})"


def _to_target(report: dict[str, Any], row: dict[str, Any]) -> str:
    t = row["time_to_target"]
    if not t["reached"]:
        return f"not reached (0/{t['n']})"
    noisy = " noisy" if row["config"] in report["timing"]["noisy"] else ""  # training seconds too
    return f"{_pm(t['seconds'], '.1f')} s ({t['reached']}/{t['n']}){noisy}"


def _front(row: dict[str, Any]) -> str:
    return ", ".join(k for k in ("time", "memory") if row["pareto"][k]) or "-"


def outcome_table(report: dict[str, Any]) -> str:
    """Accuracy against what it cost, over seeds (report.md's first table)."""
    ref = report["reference"]
    headers = [
        "config",
        "seeds",
        "val acc",
        f"Δ acc vs {ref} (95% CI)",
        f"step × {ref} (95% CI)",
        "train s",
        f"train s × {ref}",
        f"Δ train s vs {ref} (95% CI)",
        f"time to {report['target_acc']:.3f}",
        "training MiB",
        f"× {ref}",
        "Pareto front",
    ]
    body = []
    for r in report["rows"]:
        vs = r.get("vs_reference") or {}
        body.append(
            [
                f"`{r['config']}`" + (" (auto)" if r.get("auto") else ""),
                str(len(r["seeds"])),
                _pm(r["stats"]["val_acc"], ".4f"),
                _diff(vs.get("val_acc"), ".4f"),
                _ratio(vs, "step_time_ratio"),
                _train_s(report, r),
                f"{r['train_time_ratio']:.3f}",
                _wall_diff(vs.get("train_time_s"), ".1f"),
                _to_target(report, r),
                _pm(r["stats"]["training_memory_bytes"], ".1f", 1 / MiB),
                f"{r['training_memory_ratio']:.3f}",
                _front(r),
            ]
        )
    return _markdown(headers, body)


def _share(row: dict[str, Any]) -> str:
    """The trainable share, '100.00% → 0.02%' for a run whose trainable set changed (a schedule,
    auto): the step and memory columns describe its last phase."""
    start, end = row.get("trainable_pct_start", row["trainable_pct"]), row["trainable_pct"]
    return f"{end:.2f}%" if abs(start - end) < 0.005 else f"{start:.2f}% → {end:.2f}%"


def _precision(row: dict[str, Any]) -> str:
    return row["precision"] + (", channels_last" if row["channels_last"] else "")


def _mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    """Step time and memory per config, means over its seeds (report.md's second table)."""
    rows = report["rows"]
    ref = report["reference"]
    predicted = any("predicted_step_ratio" in r for r in rows)
    headers = [
        "config",
        "trainable",
        "cache",
        "precision",
        "val acc",
        "step ms",
        f"× {ref}",
        "samples/s",
        "eval no-grad ×",
    ]
    if predicted:
        headers += ["predicted ×", "error"]
    headers += [f"{label} MiB" for _, label in MEMORY_KINDS] + [f"training mem × {ref}", "peak MiB"]
    body = []
    for r in rows:
        line = [
            r["config"],
            f"{r['params_trainable']:,} ({_share(r)})",
            f"{format_bytes(r['cache_bytes'])}, built in {r['cache_build_s']:.1f} s" if r["cached"] else "-",
            _precision(r),
            f"{r['val_acc']:.4f}",
            f"{1000 * r['step_time_s']:.1f}",
            f"{r['compute_ratio']:.3f}",
            f"{r['train_samples_per_s']:.0f}",
            f"{r['eval_speedup_no_grad']:.2f}" if r["eval_speedup_no_grad"] is not None else "-",
        ]
        if predicted:
            has = "predicted_step_ratio" in r
            err = r.get("predicted_step_error")
            line += [
                f"{r['predicted_step_ratio']:.3f}" if has else "-",
                f"{100 * err:+.1f}%" if err is not None else "-",
            ]
        line += [_mib(r["memory_bytes"][k]) for k, _ in MEMORY_KINDS]
        line += [f"{r['training_memory_ratio']:.2f}", _mib(r["peak_bytes"])]
        body.append(line)
    return _markdown(headers, body)


def _markdown(headers: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in body]
    return "\n".join(out)


def _differences_table(report: dict[str, Any]) -> str:
    diffs = report["config_differences"]
    names = [r["config"] for r in report["rows"]]
    if not diffs:
        return "None: the configs differ only in name and seed."
    body = [[f"`{key}`", *(_value(values.get(n)) for n in names)] for key, values in diffs.items()]
    return _markdown(["key", *(f"`{n}`" for n in names)], body)


def _value(v: Any) -> str:
    return "-" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def text_table(report: dict[str, Any]) -> str:
    """The console version: accuracy over seeds and the difference to the reference, the step
    ratio pooled over seeds (ahead of the wall time, which a noisy machine moves), training time,
    and the memory ratio."""
    rows = []
    for r in report["rows"]:
        vs = r.get("vs_reference") or {}
        pred = "-"
        if "predicted_step_ratio" in r:
            err = r.get("predicted_step_error")
            pred = f"{r['predicted_step_ratio']:.3f}" + (f" ({100 * err:+.0f}%)" if err is not None else "")
        rows.append(
            [
                r["config"] + (" (auto)" if r.get("auto") else "") + (" (cached)" if r["cached"] else ""),
                _share(r),
                _precision(r),
                str(len(r["seeds"])),
                _pm(r["stats"]["val_acc"], ".4f"),
                _diff(vs.get("val_acc"), ".4f", words=False),
                _ratio(vs, "step_time_ratio", words=False),
                f"{r['compute_ratio']:.3f}",
                pred,
                _train_s(report, r),
                f"{r['train_time_ratio']:.3f}",
                f"{r['training_memory_ratio']:.2f}",
            ]
        )
    headers = [
        "config",
        "trainable",
        "precision",
        "seeds",
        "val acc ± 95%",
        "Δ acc [95% CI] (* resolved)",
        "step × [95% CI] (* resolved)",
        "compute ×",
        "predicted ×",
        "train s",
        "train s ×",
        "train mem ×",
    ]
    return format_table(headers, rows, right={1, 3, 4, 7, 9, 10, 11})


def unresolved_line(report: dict[str, Any]) -> str:
    """Which accuracy differences to the reference these runs do not resolve (printed and written)."""
    names = [
        r["config"] for r in report["rows"] if r.get("vs_reference") and not r["vs_reference"]["val_acc"]["resolved"]
    ]
    return f"accuracy differences to {report['reference']} not resolved by these runs: " + (
        ", ".join(names) if names else "none"
    )


def timing_line(report: dict[str, Any]) -> str:
    """Which training-time differences to the reference the machine's noise leaves unresolved,
    and which configs' seconds varied beyond the bound (printed and written)."""
    unresolved = [
        r["config"]
        for r in report["rows"]
        if r.get("vs_reference") and r["vs_reference"]["train_time_s"]["verdict"] == "unresolved (noise)"
    ]
    line = f"training-time differences to {report['reference']} unresolved (noise): " + (
        ", ".join(unresolved) if unresolved else "none"
    )
    noisy = [r for r in report["rows"] if r["config"] in report["timing"]["noisy"]]
    if noisy:
        spreads = ", ".join(f"{r['config']} {r['time_spread']:.0%}" for r in noisy)
        line += (
            f"; training seconds per epoch varied across seeds beyond {report['timing']['max_spread']:.0%} "
            f"of their mean ({spreads}): the machine was noisy, read step × (medians inside each run)"
        )
    return line


def ranking_line(report: dict[str, Any]) -> str:
    """'ranking by final accuracy: a ≈ b > c' (> resolved, ≈ not), and what it leaves out."""
    rank = report["ranking"]
    if len(rank["order"]) < 2:
        return "no ranking: it needs two configs with two seeds or more"
    left = f"; one run, left out: {', '.join(rank['left_out'])}" if rank["left_out"] else ""
    return f"ranking by final accuracy (> resolved, ≈ not resolved by these seeds): {rank['text']}{left}"


def reference_line(report: dict[str, Any]) -> str:
    """Which run the ratios and differences are against, and why (printed and written)."""
    return f"reference: {report['reference']} ({report['reference_why']})"


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """report.md, report.json and three plots (report.png: step time and memory; tradeoff.png:
    accuracy against training time and memory; curves.png: learning curves) in ``out_dir``."""
    out = Path(out_dir)
    make_folder(out)
    rows = report["rows"]
    runs = sum(len(r["seeds"]) for r in rows)
    md = [
        f"# freezetune comparison ({len(rows)} configs, {runs} runs)",
        "",
        f"Device: {report['device']}. Reference: `{report['reference']}` ({report['reference_why']}). "
        f"Target accuracy {report['target_acc']:.4f}: {report['target_rule']}.",
        "",
        *(f"**Warning**: {w}." for w in report.get("warnings", [])),
        "",
        "## Accuracy and what it cost, over seeds",
        "",
        STATS_NOTE,
        "`train s`: training seconds (the training passes plus cache builds and compiles; no evaluation "
        "or measurement). `time to` the target: the training seconds at the first epoch end whose "
        "accuracy reached it, over the seeds that did. Pareto front (time, memory): no other config is as "
        "accurate at less training time (or memory), or more accurate at the same. Intervals are plain "
        "t-intervals: with few seeds they can reach past 0 or 1.",
        "",
        TIMING_NOTE.format(spread=report["timing"]["max_spread"]),
        "",
        outcome_table(report),
        "",
        unresolved_line(report) + ".",
        "",
        timing_line(report) + ".",
        "",
        ranking_line(report)
        + (
            ". Each config is compared with the next by the same interval as above."
            if len(report["ranking"]["order"]) > 1
            else "."
        ),
        "",
        "![accuracy against cost](tradeoff.png)",
        "",
        "![learning curves](curves.png)",
        "",
        "## Step time and memory, means over seeds",
        "",
        _step_note(report),
        "",
        markdown_table(report),
        "",
        "![step time and memory](report.png)",
        "",
        "## Config keys that differ",
        "",
        _differences_table(report),
        "",
        "## Runs",
        "",
        _runs_table(rows),
        "",
    ]
    atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    plot_report(report, out / "report.png")
    plot_tradeoff(report, out / "tradeoff.png")
    plot_curves(report, out / "curves.png")
    return [out / n for n in ("report.md", "report.json", "report.png", "tradeoff.png", "curves.png")]


def _step_note(report: dict[str, Any]) -> str:
    """What the step-time and memory table's columns mean."""
    return (
        f"Step time is the median over steps after warm-up; `× {report['reference']}` compares compute "
        "(forward + backward + optimizer) with the reference's, means over seeds, which is also what "
        "`predicted ×` estimates. "
        "`eval no-grad ×`: evaluation throughput under `inference_mode` over the same forward with autograd on. "
        "`precision`: the run's `train.precision` (autocast's dtype; fp32 for runs from before it existed), "
        "and `channels_last` when the model and inputs were in that memory format. "
        f"Training memory = gradients + optimizer state + saved activations. Peak: {report['rows'][0]['peak_kind']}. "
        "A cached run trains on its frozen prefix's stored output: its step covers the rest of the network only."
    )


def _runs_table(rows: list[dict[str, Any]]) -> str:
    """One line per run: its config, seed, accuracy, training seconds and folder."""
    return _markdown(
        ["config", "seed", "val acc", "train s", "run folder"],
        [
            [r["config"], str(seed), f"{acc:.4f}", f"{t:.1f}", f"`{d}`"]
            for r in rows
            for seed, acc, t, d in zip(r["seeds"], r["per_seed_acc"], r["per_seed_train_s"], r["run_dirs"])
        ],
    )
