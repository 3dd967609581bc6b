"""``freeze.preset: auto`` during training: the per-stage gradient-norm signal, sampled every
few steps after backward, and the decision at each epoch's end (freezetune.plan.auto), turned
into ordinary freeze events that the trainer applies at the next epoch's start.

The signal is taken on all-reduced sums under DDP, so every rank decides the same prefix at
the same step; its state (the history and the decisions) travels with the checkpoint, so a
resumed run decides what the uninterrupted one did.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from freezetune.config import AutoFreezeConfig, EventSpec
from freezetune.plan import ModelTree, find_head
from freezetune.plan.auto import AutoDecision, AutoSettings, decide, model_stages
from freezetune.train.distributed import Dist

__all__ = ["AutoFreezer"]

log = logging.getLogger(__name__)


class AutoFreezer:
    """One run's adaptive-freezing policy: sample, decide, remember."""

    def __init__(
        self,
        model: nn.Module,
        tree: ModelTree,
        cfg: AutoFreezeConfig,
        epochs: int,
        device: torch.device,
        dist: Dist | None = None,
    ) -> None:
        self.settings = AutoSettings(cfg.threshold, cfg.warmup_epochs, cfg.ceiling, cfg.sample_every)
        self.stages = model_stages(tree, find_head(tree), cfg.ceiling)
        self.epochs, self.device, self.dist = epochs, device, dist
        named = dict(model.named_parameters())
        self._params = [[named[n] for n in named if n == s or n.startswith(s + ".")] for s in self.stages]
        # A prefix the config's own rules froze (the plan is applied: requires_grad says so) is the start.
        self.frozen = 0
        while self.frozen < len(self.stages) and not self._trains(self.frozen):
            self.frozen += 1
        self.history: list[dict[str, float]] = []
        self.decisions: list[dict[str, Any]] = []
        self._sums = torch.zeros(len(self.stages), dtype=torch.float64, device=device)
        self._counts = torch.zeros(len(self.stages), dtype=torch.float64, device=device)

    def _trains(self, i: int) -> bool:
        """Whether stage ``i`` has a trainable parameter now."""
        return any(p.requires_grad for p in self._params[i])

    def sample(self, step: int, scale: float = 1.0) -> None:
        """After step ``step``'s backward: every ``sample_every`` steps, add each stage's
        gradient norm (unscaled) to the epoch's sums. No host sync: the sums stay on the device."""
        if step % self.settings.sample_every:
            return
        for i, params in enumerate(self._params[self.frozen :], start=self.frozen):
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                continue
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).double())
            self._sums[i] += norm / scale
            self._counts[i] += 1

    def end_epoch(self, epoch: int) -> tuple[AutoDecision, list[str]]:
        """After ``epoch``: the epoch's mean norms join the history, the policy decides; returns
        the decision and the stages to freeze from ``epoch + 1`` (those that still train)."""
        sums, counts = self._sums.clone(), self._counts.clone()
        if self.dist is not None:  # the same numbers on every rank: the same decision
            sums, counts = self.dist.sum_(sums), self.dist.sum_(counts)
        totals, n = sums.tolist(), counts.tolist()  # one host sync per epoch
        means = {s: totals[i] / n[i] for i, s in enumerate(self.stages) if n[i] > 0}
        self._sums.zero_()
        self._counts.zero_()
        self.history.append(means)
        # Stages whose parameters the config's own rules froze: passed over, never frozen again.
        already = {s for i, s in enumerate(self.stages) if not self._trains(i)}
        decision = decide(epoch, self.history, self.stages, self.frozen, self.settings, self.epochs, already)
        self.frozen = decision.frozen_after
        row = decision.to_json(self.stages, self.settings.threshold) | {"norms": means}
        self.decisions.append(row)
        return decision, list(decision.freeze)

    def log_decision(self, name: str, epoch: int, decision: AutoDecision, stages: list[str]) -> None:
        """Say what :meth:`end_epoch` decided after ``epoch`` for run ``name``."""
        rates = ", ".join(f"{s} {r:.3g}" if r is not None else f"{s} -" for s, r in decision.rates.items())
        if stages:
            log.info(
                "%s: auto after epoch %d: freezing %s from epoch %d (gradient-norm change rates: %s; threshold %g)",
                name,
                epoch,
                ", ".join(stages),
                epoch + 1,
                rates or "none",
                self.settings.threshold,
            )
        else:
            log.info("%s: auto after epoch %d: nothing to freeze (%s)", name, epoch, decision.reason)

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs to decide as the uninterrupted run did, a stopped epoch's sums so far included."""
        return {
            "frozen": self.frozen,
            "history": self.history,
            "decisions": self.decisions,
            "sums": self._sums.cpu(),
            "counts": self._counts.cpu(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.frozen, self.history, self.decisions = state["frozen"], list(state["history"]), list(state["decisions"])
        self._sums.copy_(state["sums"])
        self._counts.copy_(state["counts"])

    def to_json(self) -> dict[str, Any]:
        """summary.json's ``auto``: the stages, the settings, the final prefix and every decision."""
        s = self.settings
        return {
            "stages": self.stages,
            "threshold": s.threshold,
            "warmup_epochs": s.warmup_epochs,
            "ceiling": s.ceiling,
            "sample_every": s.sample_every,
            "frozen_prefix": self.stages[: self.frozen],
            "decisions": [
                {k: d[k] for k in ("decided_after_epoch", "freeze", "rates", "reason")} for d in self.decisions
            ],
        }

    def freeze_events(self) -> list[EventSpec]:
        """Every freeze so far as schedule events (``freeze.auto[i]``): what rebuilds the run's schedule."""
        freezes = [(d["epoch"], stage) for d in self.decisions for stage in d["freeze"]]
        return [EventSpec(epoch, "freeze", stage, 1.0, f"freeze.auto[{i}]") for i, (epoch, stage) in enumerate(freezes)]
