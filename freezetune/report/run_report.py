"""One finished run's own report: its learning curve against training seconds, what each
epoch cost, its step time and memory, its schedule; report.md and curve.png in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from freezetune.record import atomic_write_bytes
from freezetune.record.summary import MEMORY_KINDS
from freezetune.report.plot import MiB, plot_run_curve
from freezetune.report.report import run_curve
from freezetune.utils import format_bytes
from freezetune.utils.files import make_folder

__all__ = ["RUN_REPORT_FILES", "write_run_report"]

RUN_REPORT_FILES = ("report.md", "curve.png")


def _table(headers: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + [
        "| " + " | ".join(line) + " |" for line in body
    ]


def write_run_report(run: dict[str, Any], out_dir: str | Path | None = None) -> list[Path]:
    """report.md and curve.png for ``run`` (freezetune.report.load_run), in its folder unless
    ``out_dir`` says otherwise; returns the files written."""
    out = Path(out_dir or run["run_dir"])
    make_folder(out)
    curve = run_curve(run)
    md = [*_heading(run), *_learning_curve(run.get("metrics", []), curve), *_cost(run, curve), *_schedule(run)]
    atomic_write_bytes(out / "report.md", "\n".join(md).encode())
    plot_run_curve(run, out / "curve.png")
    return [out / name for name in RUN_REPORT_FILES]


def _heading(run: dict[str, Any]) -> list[str]:
    """The run in two paragraphs: what trained where, and how it ended."""
    s = run["speed"]
    best = run.get("best") or {}
    return [
        f"# {run['name']} (seed {run['seed']})",
        "",
        f"Run folder `{run['run_dir']}`, {run['arch']}, device {run['device']}, "
        f"precision {s.get('precision', 'fp32')}{', channels_last' if s.get('channels_last') else ''}. "
        f"Trainable at the end: {run['params_trainable']:,} of {run['params_total']:,} parameters "
        f"({run['trainable_pct']:.2f}%); "
        f"frozen tensors bitwise unchanged: {'yes' if run['frozen_unchanged'] else 'NO'}.",
        "",
        f"Final validation accuracy {run['final_val_acc']:.4f} after {run['epochs']} epochs"
        + (f"; best {best['val_acc']:.4f} at epoch {best['epoch']} (best.pt)" if best.get("epoch") else "")
        + ".",
        "",
    ]


def _learning_curve(rows: list[dict[str, Any]], curve: list[tuple[float, float]]) -> list[str]:
    """Each epoch against the training seconds spent by its end."""
    return [
        "## Learning curve",
        "",
        "`train s`: cumulative training seconds at the epoch's end (training passes and what got them "
        "ready: cache builds, compiles; no evaluation or measurement).",
        "",
        *_table(
            ["epoch", "train s", "epoch s", "train loss", "val loss", "val acc", "trainable params", "lr"],
            [
                [
                    str(r["epoch"]),
                    f"{t:.1f}",
                    f"{r['epoch_time_s']:.1f}",
                    f"{r['train_loss']:.4f}",
                    f"{r['val_loss']:.4f}",
                    f"{r['val_acc']:.4f}",
                    f"{r.get('trainable_params', 0):,}",
                    ", ".join(f"{v:.3g}" for v in (r.get("lr") or {}).values()),
                ]
                for r, (t, _) in zip(rows, curve)
            ],
        ),
        "",
        "![learning curve](curve.png)",
        "",
    ]


def _eval_speed(s: dict[str, Any]) -> str:
    """The evaluation throughput and what autograd would cost it, as far as train.measure measured them."""
    text = f", {s['eval_samples_per_s']:.0f} in evaluation" if s.get("eval_samples_per_s") is not None else ""
    if s.get("eval_speedup_no_grad") is None:
        return text + " (autograd comparison not measured)."
    grad = s.get("grad_comparison") or {}
    on = f" on {grad['samples']} samples" if grad.get("samples") else ""
    return text + f" ({s['eval_speedup_no_grad']:.2f}× the throughput of the same forward with autograd on{on})."


def _finish(run: dict[str, Any]) -> str:
    """The time after the last epoch: the frozen check, train.measure's passes, model.pt."""
    if run.get("finish_s") is None:
        return ""
    return f" After the last epoch: {run['finish_s']:.1f} s (train.measure {run['speed'].get('measure', 'full')})."


def _cost(run: dict[str, Any], curve: list[tuple[float, float]]) -> list[str]:
    """Time (training, set-up, start-up), the step's phases, memory and the feature cache."""
    s, m = run["speed"], run["memory"]
    train_s = run.get("train_time_s", curve[-1][0] if curve else run["wall_time_s"])
    passes = sum(r["epoch_time_s"] for r in run.get("metrics", []))
    cache = run.get("cache") or {}
    return [
        "## What it cost",
        "",
        f"- Training: {train_s:.1f} s ({passes:.1f} s of training passes, "
        f"{max(train_s - passes, 0.0):.1f} s of set-up"
        + (f", of which {cache['build_s']:.1f} s building the feature cache" if cache.get("used") else "")
        + f"); the whole run took {run['wall_time_s']:.1f} s with evaluation and measurement"
        + (
            f", after {run['startup_s']:.1f} s of start-up (since the {run['startup_from']}: imports, model, data)."
            if run.get("startup_s") is not None
            else "."
        ),
        f"- Step (median after warm-up, the last phase's trainable set): {1000 * s['step_time_s']:.1f} ms: "
        + ", ".join(f"{k} {1000 * s[f'{k}_s']:.1f} ms" for k in ("data", "forward", "backward", "optimizer"))
        + f"; {s['train_samples_per_s']:.0f} samples/s in training"
        + _eval_speed(s)
        + _finish(run),
        "- Memory of one training step: "
        + ", ".join(f"{label} {m[key] / MiB:.1f} MiB" for key, label in MEMORY_KINDS)
        + f"; peak {m['peak_bytes'] / MiB:.1f} MiB ({m['peak_kind']}).",
        "- Feature cache: "
        + (
            f"{format_bytes(cache.get('bytes', 0))}, built in {cache.get('build_s', 0.0):.1f} s."
            if cache.get("used")
            else f"not used ({cache.get('reason') or 'off'})."
        ),
        "",
    ]


def _schedule(run: dict[str, Any]) -> list[str]:
    """The schedule's events (none: no section)."""
    events = [e for e in run.get("schedule", []) if e.get("event") != "optimizer"]
    if not events:
        return []
    return [
        "## Schedule",
        "",
        *_table(
            ["epoch", "event", "target", "tensors", "params"],
            [
                [
                    str(e["epoch"]),
                    e["event"],
                    f"`{e.get('target', '')}`",
                    str(e.get("tensors", "")),
                    str(e.get("params", "")),
                ]
                for e in events
            ],
        ),
        "",
    ]
