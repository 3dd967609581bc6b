"""The metrics of ``freezetune evaluate`` on cases worked out by hand."""

from __future__ import annotations

import pytest
import torch

from freezetune.infer import (
    accuracy,
    confusion_matrix,
    evaluation_report,
    macro_average,
    per_class_metrics,
)

# Three classes; class 2 is never predicted.
#   true 0: predicted 0, 0, 1   -> 2 right
#   true 1: predicted 1, 0      -> 1 right
#   true 2: predicted 1, 0      -> 0 right
TARGETS = torch.tensor([0, 0, 0, 1, 1, 2, 2])
PREDS = torch.tensor([0, 0, 1, 1, 0, 1, 0])


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    cm = confusion_matrix(TARGETS, PREDS, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert cm.dtype == torch.int64


def test_confusion_matrix_refuses_mismatched_or_out_of_range_input() -> None:
    with pytest.raises(ValueError, match="3 targets but 2 predictions"):
        confusion_matrix(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="preds holds an index outside 0..2"):
        confusion_matrix(torch.tensor([0]), torch.tensor([3]), 3)


def test_per_class_metrics_by_hand_a_class_never_predicted_has_precision_zero() -> None:
    m = per_class_metrics(confusion_matrix(TARGETS, PREDS, 3))
    # class 0: predicted 4 times, 2 right -> P 2/4; 3 samples -> R 2/3; F1 = 2PR/(P+R) = 4/7
    # class 1: predicted 3 times, 1 right -> P 1/3; 2 samples -> R 1/2; F1 = 2/5
    # class 2: never predicted -> P 0/0, defined as 0; R 0/2 = 0; F1 0
    assert m.precision.tolist() == pytest.approx([2 / 4, 1 / 3, 0.0])
    assert m.recall.tolist() == pytest.approx([2 / 3, 1 / 2, 0.0])
    assert m.f1.tolist() == pytest.approx([4 / 7, 2 / 5, 0.0])
    assert m.support.tolist() == [3, 2, 2]
    assert accuracy(confusion_matrix(TARGETS, PREDS, 3)) == pytest.approx(3 / 7)


def test_macro_average_is_over_the_classes_with_samples() -> None:
    # Class 2 has no samples; class 1 is predicted once, wrongly (precision 0).
    m = per_class_metrics(confusion_matrix(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]), 3))
    assert m.support.tolist() == [2, 1, 0]
    macro = macro_average(m)
    assert macro["precision"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert macro["recall"] == pytest.approx((1.0 + 0.0) / 2)
    assert macro["f1"] == pytest.approx((0.8 + 0.0) / 2)


def test_an_empty_matrix_gives_zeros_not_nan() -> None:
    cm = confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 2)
    assert cm.tolist() == [[0, 0], [0, 0]] and accuracy(cm) == 0.0
    assert macro_average(per_class_metrics(cm)) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_the_report_lists_only_the_classes_that_occur() -> None:
    names = ["ant", "bee", "cat", "dog", "eel"]
    # The data holds bee and dog; the model wrongly says eel once.
    report = evaluation_report(torch.tensor([1, 1, 3]), torch.tensor([1, 4, 3]), names)
    assert report["samples"] == 3 and report["correct"] == 2 and report["accuracy"] == pytest.approx(2 / 3)
    assert report["confusion"]["classes"] == ["bee", "dog", "eel"]
    assert report["confusion"]["matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    eel = report["per_class"][2]
    assert eel == {"class": "eel", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro"]["recall"] == pytest.approx((0.5 + 1.0) / 2)  # eel has no support: left out
