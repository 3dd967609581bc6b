"""Learning-rate schedules as a pure function of the optimizer step.

torch's schedulers remember each param group's base LR when they are built, so
a group added later (an unfreeze event) is missed or mis-scaled (pytorch#62475,
transformers#20029). Here the schedule is a multiplier ``factor(step)`` and every
group carries its own ``base_lr``: before each optimizer step, every group,
however late it joined, gets ``base_lr * factor(step)``. The only state to save
is the step count.

The formulas are torch's (``CosineAnnealingLR``, ``StepLR``, ``OneCycleLR`` with
``cycle_momentum=False``), pinned against them in tests/train/test_lr_schedule.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from freezetune.config import SchedulerConfig

__all__ = ["LRSchedule", "set_lr"]


@dataclass(frozen=True)
class LRSchedule:
    """``train.scheduler`` laid out over a run's optimizer steps."""

    cfg: SchedulerConfig
    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        """Optimizer steps in the whole run."""
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        """Steps of linear warm-up (none for onecycle, which warms up by itself)."""
        return round(self.cfg.warmup_epochs * self.steps_per_epoch) if self.cfg.name != "onecycle" else 0

    def factor(self, step: int) -> float:
        """The multiplier on every group's base LR for optimizer step ``step`` (from 0)."""
        c, warm = self.cfg, self.warmup_steps
        if step < warm:
            return (step + 1) / warm  # linear, reaching 1 at the first step after warm-up
        if c.name == "none":
            return 1.0
        if c.name == "step":
            return c.gamma ** (step // (c.step_epochs * self.steps_per_epoch))
        if c.name == "cosine":
            t, span = step - warm, max(self.total_steps - warm, 1)
            return c.min_lr_scale + (1 - c.min_lr_scale) * (1 + math.cos(math.pi * min(t, span) / span)) / 2
        return self._onecycle(step)

    def _onecycle(self, step: int) -> float:
        # torch.optim.lr_scheduler.OneCycleLR, two phases, cosine annealing.
        c, total = self.cfg, self.total_steps
        start, peak, end = 1 / c.div_factor, 1.0, 1 / (c.div_factor * c.final_div_factor)
        rise_end = float(c.pct_start * total) - 1
        if step <= rise_end:
            return _cos(start, peak, step / rise_end) if rise_end > 0 else peak
        return _cos(peak, end, (step - rise_end) / (total - 1 - rise_end))


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Give every group ``base_lr * factor``; groups without a ``base_lr`` keep their LR."""
    for group in optimizer.param_groups:
        if "base_lr" in group:
            group["lr"] = group["base_lr"] * factor
