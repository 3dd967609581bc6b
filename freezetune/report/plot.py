"""The plots: the comparison of runs (step time split, memory split and accuracy, side by
side) and the confusion matrix of an evaluation."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from freezetune.record import atomic_write_bytes
from freezetune.record.summary import MEMORY_KINDS

__all__ = ["MiB", "plot_confusion", "plot_report"]

MiB = 1024 * 1024

_PHASE_COLOURS = {"data": "#bbbbbb", "forward": "#4c72b0", "backward": "#dd8452", "optimizer": "#55a868"}
_MEMORY_COLOURS = ("#4c72b0", "#a1c9f4", "#dd8452", "#55a868", "#c44e52")


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Draw ``report`` (freezetune.report.report.build_report) into the PNG at ``path``."""
    # Imported here: matplotlib is an optional extra ([report]) and slow to import.
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt

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
    ax.set_title("step time by phase (× = compute vs full)")
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
    ax.bar(x, accs, color="#8172b3")
    for i, a in enumerate(accs):
        ax.annotate(f"{a:.1f}", (i, a), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("accuracy")

    for ax in axes:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    fig.suptitle(f"freezetune: {len(rows)} configs on {report['device']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_ANNOTATE_MAX = 30  # classes up to which every cell gets its count written in


def plot_confusion(matrix: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> Path:
    """Draw a confusion matrix (rows true class, columns predicted) as a heat map PNG at ``path``.

    Cells are coloured by their share of the row (the recall of the true class), so that a
    rare class's mistakes show as clearly as a common one's; each cell is labelled with its
    count. The file is written whole or not at all.
    """
    # Imported here: matplotlib is an optional extra ([report]) and slow to import.
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in CI
    import matplotlib.pyplot as plt
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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
