"""Which epoch is best (``best.pt``) and when to stop early: pure functions of the
epochs so far, so a resumed run, which restores its epochs from the checkpoint,
decides exactly as an unbroken one would."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from freezetune.config import TrainConfig
from freezetune.record import EpochResult

__all__ = ["Monitor"]


@dataclass(frozen=True)
class Monitor:
    """``train.monitor`` and ``train.early_stopping`` applied to a run's epochs."""

    key: str  # val_acc (higher is better) or val_loss (lower is better)
    patience: int | None = None  # None: never stop early
    min_delta: float = 0.0

    @classmethod
    def of(cls, cfg: TrainConfig) -> Monitor:
        """The monitor a config asks for."""
        stop = cfg.early_stopping
        return cls(cfg.monitor, stop.patience if stop else None, stop.min_delta if stop else 0.0)

    def value(self, epoch: EpochResult) -> float:
        """The monitored value of one epoch."""
        return float(getattr(epoch, self.key))

    def _better(self, value: float, than: float, margin: float = 0.0) -> bool:
        if math.isnan(value):
            return False  # a NaN loss is never an improvement
        return value > than + margin if self.key == "val_acc" else value < than - margin

    def best(self, epochs: Sequence[EpochResult]) -> EpochResult | None:
        """The best epoch so far; of equal ones, the earliest (a later tie is no reason to replace best.pt)."""
        best = None
        for e in epochs:
            if best is None or self._better(self.value(e), self.value(best)):
                best = e
        return best

    def is_new_best(self, epochs: Sequence[EpochResult]) -> bool:
        """Whether the last epoch is the best so far (best.pt is written then)."""
        return bool(epochs) and self.best(epochs) is epochs[-1]

    def epochs_without_improvement(self, epochs: Sequence[EpochResult]) -> int:
        """Epochs since the monitored value last beat its best by more than ``min_delta``
        (as Lightning's EarlyStopping counts)."""
        record, wait = None, 0
        for e in epochs:
            v = self.value(e)
            if record is None or math.isnan(record) or self._better(v, record, self.min_delta):
                record, wait = v, 0
            else:
                wait += 1
        return wait

    def should_stop(self, epochs: Sequence[EpochResult]) -> bool:
        """Whether early stopping ends the run after the last of ``epochs``."""
        return self.patience is not None and self.epochs_without_improvement(epochs) >= self.patience
