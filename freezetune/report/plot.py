"""The plots: the comparison of runs (step time split, memory split and accuracy, side by
side) and the confusion matrix of an evaluation."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from freezetune.record import atomic_write_bytes
from freezetune.record.summary import MEMORY_KINDS

__all__ = ["MiB", "confusion_png", "plot_curves", "plot_report", "plot_run_curve", "plot_tradeoff"]

MiB = 1024 * 1024

_PHASE_COLOURS = {"data": "#bbbbbb", "forward": "#4c72b0", "backward": "#dd8452", "optimizer": "#55a868"}
_MEMORY_COLOURS = ("#4c72b0", "#a1c9f4", "#dd8452", "#55a868", "#c44e52")


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Draw ``report`` (freezetune.report.report.build_report) into the PNG at ``path``: step
    time by phase, memory by kind and accuracy, per config."""
    plt = _pyplot()
    rows = report["rows"]
    names = [r["config"] for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(5 + 2.2 * len(rows), 4.8))

    ax = axes[0]
    bottom = [0.0] * len(rows)
    for phase, colour in _PHASE_COLOURS.items():
        values = [1000 * r["phases_s"][phase] for r in rows]
        ax.bar(x, values, bottom=bottom, color=colour, label=phase)
        bottom = [b + v for b, v in zip(bottom, values)]
    for i, r in enumerate(rows):
        label = f"×{r['compute_ratio']:.3f}"
        if "predicted_step_ratio" in r:
            label += f"\npred ×{r['predicted_step_ratio']:.3f}"
        ax.annotate(label, (i, bottom[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.4 * max(bottom))  # headroom for the ratio labels and the legend
    ax.set_ylabel("median step time (ms)")
    ax.set_title(f"step time by phase (× = compute vs {report['reference']})")
    ax.legend(fontsize=8, ncol=2, loc="upper right")

    ax = axes[1]
    bottom = [0.0] * len(rows)
    for (key, label), colour in zip(MEMORY_KINDS, _MEMORY_COLOURS):
        values = [r["memory_bytes"][key] / MiB for r in rows]
        ax.bar(x, values, bottom=bottom, color=colour, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylim(0, 1.45 * max(bottom))
    ax.set_ylabel("MiB")
    ax.set_title("memory by kind (one training step)")
    ax.legend(fontsize=8, ncol=2, loc="upper right")

    ax = axes[2]
    accs = [100 * r["val_acc"] for r in rows]
    ax.bar(x, accs, color="#8172b3", yerr=[100 * _half(r["stats"]["val_acc"]) for r in rows], capsize=3)
    for i, a in enumerate(accs):
        ax.annotate(f"{a:.1f}", (i, a), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy (mean, 95% interval over seeds)")

    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"freezetune: {len(rows)} configs on {report['device']}", fontsize=10)
    return _save(fig, path)


def _pyplot() -> Any:
    # Imported here: matplotlib is an optional extra ([report]) and slow to import.
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes (then closed): drawn in memory, so that the file is written
    whole or not at all by the one writer."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    fig.clf()
    _pyplot().close(fig)
    return buffer.getvalue()


def _save(fig: Any, path: str | Path) -> Path:
    """Whole or not at all: a reader never finds half a PNG."""
    path = Path(path)
    atomic_write_bytes(path, _png(fig))
    return path


def _half(stat: dict[str, Any]) -> float:
    """A Stat's 95% half-width (0 for one run: no interval, no bar)."""
    return 0.0 if stat["high"] is None else stat["high"] - stat["mean"]


def _colours(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_tradeoff(report: dict[str, Any], path: str | Path) -> Path:
    """Validation accuracy against training seconds and against training memory, one point per
    config with 95% intervals over seeds as error bars, and each Pareto front drawn."""
    plt = _pyplot()
    rows = report["rows"]
    colours = _colours(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    panels = (
        ("train_time_s", 1.0, "training seconds (mean ± 95% over seeds)", "time"),
        (
            "training_memory_bytes",
            1 / MiB,
            "training memory, MiB (gradients + optimizer state + saved activations)",
            "memory",
        ),
    )
    for ax, (key, scale, xlabel, front) in zip(axes, panels):
        for r, colour in zip(rows, colours):
            stat, acc = r["stats"][key], r["stats"]["val_acc"]
            ax.errorbar(
                stat["mean"] * scale,
                100 * acc["mean"],
                xerr=_half(stat) * scale,
                yerr=100 * _half(acc),
                fmt="o",
                color=colour,
                capsize=3,
                label=r["config"] + (" (reference)" if r["config"] == report["reference"] else ""),
            )
            # A config whose seconds the machine's noise swamps (report.json's timing.noisy) says so
            # where its wide time bar is drawn.
            noisy = front == "time" and r["config"] in report["timing"]["noisy"]
            ax.annotate(
                r["config"] + (" (noisy)" if noisy else ""),
                (stat["mean"] * scale, 100 * acc["mean"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        on = sorted((r["stats"][key]["mean"] * scale, 100 * r["val_acc"]) for r in rows if r["pareto"][front])
        if on:
            # The front as a staircase: from each point, cost rises before accuracy does.
            xs, ys = [on[0][0]], [on[0][1]]
            for cx, cy in on[1:]:
                xs += [cx, cx]
                ys += [ys[-1], cy]
            ax.plot(xs, ys, "--", color="#555555", linewidth=1, label="Pareto front", zorder=0)
        ax.axhline(100 * report["target_acc"], color="#c44e52", linewidth=0.8, linestyle=":", label="target accuracy")
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel("final validation accuracy (%)")
        ax.set_xlim(left=0)
    axes[0].set_title("accuracy against training time", fontsize=10)
    axes[1].set_title("accuracy against training memory", fontsize=10)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"freezetune: {len(rows)} configs on {report['device']}", fontsize=10)
    return _save(fig, path)


def plot_curves(report: dict[str, Any], path: str | Path) -> Path:
    """Learning curves: validation accuracy at each epoch end against cumulative training
    seconds, the mean over seeds as a line and the seeds' range as a band."""
    plt = _pyplot()
    rows = report["rows"]
    fig, ax = plt.subplots(figsize=(8.5, 5.2))
    for r, colour in zip(rows, _colours(len(rows))):
        curve = r["curve"]
        xs = [0.0] + [p["train_s"] for p in curve]
        ax.plot(xs[1:], [100 * p["val_acc"] for p in curve], "o-", color=colour, markersize=3, label=r["config"])
        if len(r["seeds"]) > 1:
            ax.fill_between(
                xs[1:],
                [100 * p["val_acc_min"] for p in curve],
                [100 * p["val_acc_max"] for p in curve],
                color=colour,
                alpha=0.15,
                linewidth=0,
            )
        for e in r.get("events", []):
            if 2 <= e["epoch"] <= len(curve) + 1:  # acts from the end of the epoch before
                at = curve[e["epoch"] - 2]
                ax.plot(at["train_s"], 100 * at["val_acc"], "v", color=colour, markersize=7)
                ax.annotate(
                    e["label"],
                    (at["train_s"], 100 * at["val_acc"]),
                    fontsize=6,
                    xytext=(3, -10),
                    textcoords="offset points",
                )
    ax.axhline(100 * report["target_acc"], color="#c44e52", linewidth=0.8, linestyle=":", label="target accuracy")
    ax.set_xlabel("cumulative training seconds (mean over seeds)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_xlim(left=0)
    ax.set_title("learning curves: mean over seeds, band = lowest to highest seed, ▼ = schedule event", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def event_times(run: dict[str, Any]) -> list[tuple[float, str]]:
    """(training seconds, label) of each schedule event of a run: an event at epoch N acts from
    the end of epoch N - 1, where the curve's x stands then."""
    ends = {row["epoch"]: row.get("train_s") for row in run.get("metrics", [])}
    out = []
    for e in run.get("schedule", []):
        if e.get("event") in ("freeze", "unfreeze") and e.get("epoch", 1) > 1:
            t = ends.get(e["epoch"] - 1)
            if t is not None:
                out.append((t, f"{e['event']} {e.get('target', '')}"))
    return out


def plot_run_curve(run: dict[str, Any], path: str | Path) -> Path:
    """One run's learning curve: validation accuracy (left axis) and training and validation
    loss (right axis) at each epoch end against cumulative training seconds; schedule events
    drawn where they acted."""
    plt = _pyplot()
    rows = run.get("metrics", [])
    total, xs = 0.0, []
    for r in rows:
        total += r["epoch_time_s"]
        xs.append(r.get("train_s", total))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    ax.plot(xs, [100 * r["val_acc"] for r in rows], "o-", color="#4c72b0", label="validation accuracy")
    ax.set_xlabel("cumulative training seconds")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_xlim(left=0)
    loss = ax.twinx()
    loss.plot(xs, [r["train_loss"] for r in rows], "s--", color="#dd8452", markersize=4, label="training loss")
    loss.plot(xs, [r["val_loss"] for r in rows], "^--", color="#c44e52", markersize=4, label="validation loss")
    loss.set_ylabel("loss")
    for t, label in event_times(run):
        ax.axvline(t, color="#555555", linewidth=0.8, linestyle=":")
        ax.annotate(label, (t, ax.get_ylim()[0]), rotation=90, fontsize=7, va="bottom", ha="right")
    handles = ax.get_legend_handles_labels()[0] + loss.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")
    ax.set_title(f"{run['name']} (seed {run.get('seed', 0)})", fontsize=10)
    return _save(fig, path)


_ANNOTATE_MAX = 30  # classes up to which every cell gets its count written in


def confusion_png(matrix: list[list[int]], classes: list[str], title: str = "") -> bytes:
    """A confusion matrix (rows true class, columns predicted) as a heat map, the PNG's bytes.

    Cells are coloured by their share of the row (the recall of the true class), so that a
    rare class's mistakes show as clearly as a common one's; each cell is labelled with its
    count.
    """
    plt = _pyplot()
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64).reshape(len(classes), len(classes))
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    n = len(classes)
    side = min(4 + 0.45 * n, 40)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= _ANNOTATE_MAX:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.5 else "black"
                    ax.text(
                        j, i, str(counts[i, j]), ha="center", va="center", fontsize=10 if n <= 10 else 7, color=colour
                    )
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix", fontsize=10)
    return _png(fig)
