"""Compare finished runs: a Markdown table, a JSON file and a plot.

Ratios are taken against the reference run: the one that trains every
parameter (full fine-tuning), else the first run given."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from freezetune.config import ConfigError
from freezetune.record.summary import MEMORY_KINDS
from freezetune.report.plot import MiB, plot_report
from freezetune.utils import format_table

__all__ = ["MEMORY_KINDS", "build_report", "load_run", "markdown_table", "text_table", "write_report"]

MIN_RATIO_FOR_ERROR = 0.01
# Memory that freezing can remove: everything but the weights themselves.
_TRAINING_KINDS = ("grad_bytes", "optimizer_state_bytes", "saved_activation_bytes")


def load_run(path: str | Path) -> dict[str, Any]:
    """A run folder's summary.json, with its folder added; ConfigError for a folder that holds
    no finished run."""
    path = Path(path)
    if not (path / "summary.json").is_file():
        if (path / "FAILED").is_file():
            reason = (path / "FAILED").read_text().splitlines()[0]
            raise ConfigError([f"{path} holds a run that failed ({reason}): it has no results to compare"])
        what = "no such folder" if not path.exists() else "no finished run there (no summary.json)"
        raise ConfigError([f"{path}: {what}"])
    summary = json.loads((path / "summary.json").read_text())
    summary["run_dir"] = str(path)
    return summary


def _reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return next((r for r in runs if r["params_trainable"] == r["params_total"]), runs[0])


def build_report(runs: list[dict[str, Any]], estimates: dict[str, dict] | None = None) -> dict[str, Any]:
    """Rows of derived numbers, one per run, ratios against the reference run."""
    estimates = estimates or {}
    ref = _reference(runs)
    rs, rm = ref["speed"], ref["memory"]
    ref_training = sum(rm[k] for k in _TRAINING_KINDS)
    rows = []
    for r in runs:
        s, m = r["speed"], r["memory"]
        training = sum(m[k] for k in _TRAINING_KINDS)
        row = {
            "config": r["name"],
            "run_dir": r["run_dir"],
            "params_trainable": r["params_trainable"],
            "trainable_pct": r["trainable_pct"],
            "val_acc": r["final_val_acc"],
            "step_time_s": s["step_time_s"],
            "step_ratio": s["step_time_s"] / rs["step_time_s"],
            "compute_time_s": s["compute_time_s"],
            "compute_ratio": s["compute_time_s"] / rs["compute_time_s"],
            "phases_s": {k: s[f"{k}_s"] for k in ("data", "forward", "backward", "optimizer")},
            "train_samples_per_s": s["train_samples_per_s"],
            "eval_samples_per_s": s["eval_samples_per_s"],
            "eval_speedup_no_grad": s["eval_speedup_no_grad"],
            # Written by the runner since train.precision exists; every earlier run trained in fp32.
            "precision": s.get("precision", "fp32"),
            "channels_last": bool(s.get("channels_last", False)),
            "memory_bytes": {k: m[k] for k, _ in MEMORY_KINDS},
            "training_memory_bytes": training,
            "training_memory_ratio": training / ref_training if ref_training else 1.0,
            "saved_ratio": m["saved_activation_bytes"] / rm["saved_activation_bytes"]
            if rm["saved_activation_bytes"]
            else 1.0,
            "peak_bytes": m["peak_bytes"],
            "peak_kind": m["peak_kind"],
            "peak_ratio": m["peak_bytes"] / rm["peak_bytes"],
            "frozen_unchanged": r["frozen_unchanged"],
            "device": r["device"],
        }
        cache = r.get("cache") or {}
        row["cached"] = bool(cache.get("used"))
        row["cache_bytes"] = cache.get("bytes", 0) if row["cached"] else 0
        row["cache_build_s"] = cache.get("build_s", 0.0) if row["cached"] else 0.0
        est = estimates.get(r["name"])
        if est:
            row["predicted_step_ratio"] = _cached_ratio(est) if row["cached"] else est["predicted_step_ratio"]
            # Below 1% of full fine-tuning a step is tens of microseconds, finer than the
            # profile's per-module hooks resolve: a relative error there means nothing.
            if row["compute_ratio"] >= MIN_RATIO_FOR_ERROR:
                row["predicted_step_error"] = row["predicted_step_ratio"] / row["compute_ratio"] - 1.0
            row["predicted_saved_ratio"] = est["predicted_saved_ratio"]
        rows.append(row)
    return {"reference": ref["name"], "device": _device_name(ref["device"]), "rows": rows}


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


def _mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def _precision(row: dict[str, Any]) -> str:
    return row["precision"] + (", channels_last" if row["channels_last"] else "")


def markdown_table(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table (report.md)."""
    rows = report["rows"]
    predicted = any("predicted_step_ratio" in r for r in rows)
    headers = [
        "config",
        "trainable",
        "cache",
        "precision",
        "val acc",
        "step ms",
        "× full",
        "samples/s",
        "eval no-grad ×",
    ]
    if predicted:
        headers += ["predicted ×", "error"]
    headers += [f"{label} MiB" for _, label in MEMORY_KINDS] + ["training mem × full", "peak MiB"]
    body = []
    for r in rows:
        line = [
            r["config"],
            f"{r['params_trainable']:,} ({r['trainable_pct']:.2f}%)",
            f"{r['cache_bytes'] / MiB:.1f} MiB, built in {r['cache_build_s']:.1f} s" if r["cached"] else "-",
            _precision(r),
            f"{r['val_acc']:.4f}",
            f"{1000 * r['step_time_s']:.1f}",
            f"{r['compute_ratio']:.3f}",
            f"{r['train_samples_per_s']:.0f}",
            f"{r['eval_speedup_no_grad']:.2f}",
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
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in body]
    return "\n".join(out)


def text_table(report: dict[str, Any]) -> str:
    """A compact terminal version of the table."""
    rows = []
    for r in report["rows"]:
        pred = "-"
        if "predicted_step_ratio" in r:
            err = r.get("predicted_step_error")
            pred = f"{r['predicted_step_ratio']:.3f}" + (f" ({100 * err:+.0f}%)" if err is not None else "")
        rows.append(
            [
                r["config"] + (" (cached)" if r["cached"] else ""),
                f"{r['trainable_pct']:.2f}%",
                _precision(r),
                f"{r['val_acc']:.4f}",
                f"{1000 * r['step_time_s']:.0f}",
                f"{r['compute_ratio']:.3f}",
                pred,
                f"{r['training_memory_ratio']:.2f}",
                _mib(r["peak_bytes"]),
            ]
        )
    headers = [
        "config",
        "trainable",
        "precision",
        "val acc",
        "step ms",
        "compute × full",
        "predicted ×",
        "train mem × full",
        "peak MiB",
    ]
    return format_table(headers, rows, right={1, 3, 4, 5, 7, 8})


def write_report(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """report.md, report.json and report.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peak_kind = report["rows"][0]["peak_kind"]
    md = [
        f"# freezetune comparison ({len(report['rows'])} runs)",
        "",
        f"Device: {report['device']}. Ratios (×) are against `{report['reference']}`. "
        "Step time is the median over steps after warm-up; `× full` compares compute "
        "(forward + backward + optimizer), which is also what `predicted ×` estimates. "
        "`eval no-grad ×`: evaluation throughput under `inference_mode` over the same forward with autograd on. "
        "`precision`: the run's `train.precision` (autocast's dtype; fp32 for runs from before it existed), "
        "and `channels_last` when the model and inputs were in that memory format. "
        f"Training memory = gradients + optimizer state + saved activations. Peak: {peak_kind}. "
        "A cached run trains on its frozen prefix's stored output: its step covers the rest of the network only.",
        "",
        markdown_table(report),
        "",
        "![report](report.png)",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(report, out / "report.png")
    return [out / "report.md", out / "report.json", out / "report.png"]
