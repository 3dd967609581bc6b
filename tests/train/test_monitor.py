"""Monitor: which epoch is best and when early stopping ends a run, from the epochs alone."""

from __future__ import annotations

import math

from freezetune.record import EpochResult
from freezetune.train.monitor import Monitor


def epochs(*values: float, key: str = "val_acc") -> list[EpochResult]:
    other = "val_loss" if key == "val_acc" else "val_acc"
    return [
        EpochResult(epoch=i + 1, train_loss=1.0, epoch_time_s=1.0, samples_per_s=1.0, steps=1, **{key: v, other: 0.5})
        for i, v in enumerate(values)
    ]


def test_accuracy_is_best_highest_and_the_earliest_of_equals() -> None:
    m = Monitor("val_acc")
    assert m.best(epochs(0.5, 0.7, 0.7, 0.6)).epoch == 2  # a later tie does not replace best.pt
    assert m.is_new_best(epochs(0.5, 0.7)) and not m.is_new_best(epochs(0.5, 0.7, 0.7))
    assert m.best([]) is None and not m.is_new_best([])


def test_loss_is_best_lowest() -> None:
    m = Monitor("val_loss")
    assert m.best(epochs(0.9, 0.4, 0.6, key="val_loss")).epoch == 2
    assert m.is_new_best(epochs(0.9, 0.4, 0.3, key="val_loss"))


def test_patience_counts_epochs_since_the_last_real_improvement() -> None:
    m = Monitor("val_acc", patience=2, min_delta=0.05)
    # 0.52 beats 0.50 but not by more than min_delta: it does not reset the count.
    assert m.epochs_without_improvement(epochs(0.50, 0.52)) == 1
    assert not m.should_stop(epochs(0.50, 0.52))
    assert m.should_stop(epochs(0.50, 0.52, 0.54))
    assert m.epochs_without_improvement(epochs(0.50, 0.52, 0.60)) == 0
    assert not Monitor("val_acc").should_stop(epochs(0.9, 0.1, 0.1, 0.1))  # no patience: never stops


def test_a_nan_loss_never_counts_as_an_improvement() -> None:
    m = Monitor("val_loss", patience=1)
    assert m.best(epochs(0.5, math.nan, key="val_loss")).epoch == 1
    assert m.should_stop(epochs(0.5, math.nan, key="val_loss"))
    assert m.epochs_without_improvement(epochs(math.nan, 0.5, key="val_loss")) == 0
