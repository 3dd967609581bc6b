"""Classification metrics from labels and predictions: the confusion matrix, per-class
precision, recall and F1, their macro averages, and the evaluation report built from them.

Pure functions of integer tensors, no model and no files. A ratio whose denominator is 0
is defined as 0, as scikit-learn's ``zero_division=0`` does: the precision of a class that
is never predicted, the recall of a class with no samples, the F1 of a class whose
precision and recall are both 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ClassMetrics", "accuracy", "confusion_matrix", "evaluation_report", "macro_average", "per_class_metrics"]


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, k: int) -> torch.Tensor:
    """Counts of (true class, predicted class) pairs.

    Args:
        targets: true class indices, shape ``(n,)``.
        preds: predicted class indices, shape ``(n,)``.
        k: the number of classes; every index must be in ``0..k-1``.

    Returns:
        An int64 ``(k, k)`` tensor: row ``i``, column ``j`` counts the samples of class ``i``
        predicted as ``j``.
    """
    targets, preds = targets.reshape(-1).long(), preds.reshape(-1).long()
    if targets.shape != preds.shape:
        raise ValueError(f"{targets.numel()} targets but {preds.numel()} predictions")
    for name, t in (("targets", targets), ("preds", preds)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            raise ValueError(f"{name} holds an index outside 0..{k - 1}")
    return torch.bincount(targets * k + preds, minlength=k * k).reshape(k, k)


@dataclass(frozen=True)
class ClassMetrics:
    """Per-class precision, recall, F1 (float64) and support (int64), each of shape ``(k,)``."""

    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    support: torch.Tensor  # samples of each true class (the row sums)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, 0 where ``den`` is 0."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))


def per_class_metrics(cm: torch.Tensor) -> ClassMetrics:
    """Precision, recall, F1 and support of each class of the confusion matrix ``cm``
    (rows true class, columns predicted). Undefined ratios are 0 (see the module docstring)."""
    tp = cm.diagonal()
    support, predicted = cm.sum(dim=1), cm.sum(dim=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return ClassMetrics(precision, recall, f1, support.long())


def accuracy(cm: torch.Tensor) -> float:
    """The fraction of samples on the diagonal of ``cm`` (0.0 for an empty matrix)."""
    total = int(cm.sum())
    return int(cm.diagonal().sum()) / total if total else 0.0


def macro_average(m: ClassMetrics) -> dict[str, float]:
    """The unweighted mean of precision, recall and F1 over the classes with samples.

    A class the data does not have (support 0) is left out: a labelled folder may hold
    only some of a model's classes, and its absent classes would otherwise pull every
    average down by their undefined (0) recall.
    """
    present = m.support > 0
    if not bool(present.any()):
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    return {name: float(getattr(m, name)[present].mean()) for name in ("precision", "recall", "f1")}


def evaluation_report(targets: torch.Tensor, preds: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Accuracy, per-class metrics, macro averages and the confusion matrix, as plain JSON values.

    Only the classes that occur (as a true or a predicted class) are listed, in model
    output order: a 1000-class model evaluated on a folder of three classes gets rows for
    those three and a column for each class it wrongly predicted. Leaving the others out
    drops only zeros.

    Args:
        targets: true class indices (model output order), shape ``(n,)``.
        preds: predicted class indices, shape ``(n,)``.
        classes: the name of each model output.
    """
    k = len(classes)
    cm = confusion_matrix(targets, preds, k)
    m = per_class_metrics(cm)
    shown = [i for i in range(k) if int(cm[i].sum()) or int(cm[:, i].sum())]
    return {
        "samples": int(cm.sum()),
        "correct": int(cm.diagonal().sum()),
        "accuracy": accuracy(cm),
        "per_class": [
            {
                "class": classes[i],
                "precision": float(m.precision[i]),
                "recall": float(m.recall[i]),
                "f1": float(m.f1[i]),
                "support": int(m.support[i]),
            }
            for i in shown
        ],
        "macro": {**macro_average(m), "over": "classes with support > 0"},
        "confusion": {
            "rows": "true class",
            "columns": "predicted class",
            "classes": [classes[i] for i in shown],
            "matrix": cm[shown][:, shown].tolist(),
        },
    }
