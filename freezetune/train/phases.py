"""The schedule's phases applied to a model as training goes: requires_grad and BatchNorm
modes, the optimizer's groups and the ledger (the tensors that must not change)
(freezetune.record.integrity), all kept in step when an event changes the trainable set."""

from __future__ import annotations

import logging
from typing import Any

import torch

from freezetune.config import Config
from freezetune.plan import FreezePlan, Schedule, apply_plan
from freezetune.plan.groups import Setting
from freezetune.record import Ledger
from freezetune.train.distributed import Dist
from freezetune.train.optim import add_trainable, check_optimizer, remove_frozen

__all__ = ["Phases"]

log = logging.getLogger(__name__)


class Phases:
    """Which phase of ``schedule`` is in force, and the events that led there."""

    def __init__(
        self,
        cfg: Config,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        settings: dict[str, Setting],
        dist: Dist | None = None,
    ) -> None:
        self.cfg, self.model, self.optimizer, self.settings, self.dist = cfg, model, optimizer, settings, dist
        self.schedule = schedule
        self.plan: FreezePlan = schedule.initial
        self.ledger = Ledger(model, self.plan, cfg.freeze.frozen_dtype)  # digests as each tensor froze
        self.events: list[dict[str, Any]] = []  # every event applied so far, optimizer rows included

    def reschedule(self, schedule: Schedule) -> None:
        """Follow ``schedule`` from now on (freeze.preset auto adds events as it decides)."""
        self.schedule = schedule

    def enter(self, epoch: int, lr_factor: float, quiet: bool = False) -> list[dict[str, Any]]:
        """Apply the events that start at ``epoch``: requires_grad and BatchNorm modes,
        optimizer groups (their LR at ``lr_factor``), the ledger; returns
        what was applied."""
        phase = self.schedule.phase_at(epoch)
        if phase.plan is self.plan:
            return []
        # Tensors about to leave protection must still be bitwise what they were.
        new_plan = phase.plan
        if self.dist is not None:  # a BatchNorm frozen now is pinned with rank 0's statistics, on every rank
            self.dist.broadcast_buffers(self.model)
        leaving = self.ledger.move_to(new_plan)
        apply_plan(self.model, new_plan, self.cfg.freeze.frozen_dtype)  # up-casts what it unfreezes
        removed = remove_frozen(self.optimizer)
        groups = add_trainable(
            self.optimizer,
            self.model,
            self.cfg.train.optimizer,
            self.settings,
            self.schedule.lr_scales(epoch),
            epoch,
            lr_factor,
        )
        check_optimizer(self.optimizer, self.model)
        self.plan = new_plan
        rows = []
        for ev in phase.events:
            row = ev.to_json()
            if not ev.spec.rule.freezes:
                mine = [ok for n, ok in leaving.items() if _owned_by(n, ev.params)]
                row |= {"unchanged_until_event": all(mine), "tensors_checked": len(mine)}
            rows.append(row)
        rows.append(
            {
                "epoch": epoch,
                "event": "optimizer",
                "removed_tensors": removed,
                "new_groups": [{"name": g["name"], "tensors": len(g["params"]), "lr": g["lr"]} for g in groups],
                "trainable_params": new_plan.numel_trainable,
            }
        )
        self.events.extend(rows)
        if not quiet:
            self._log(epoch, rows[:-1])
        return rows

    def replay(self, through: int, lr_factor: float) -> None:
        """Re-enter every phase that starts by epoch ``through`` (resume): same groups, same order."""
        for phase in self.schedule.phases[1:]:
            if phase.start <= through:
                self.enter(phase.start, lr_factor, quiet=True)  # already logged and recorded by the first run

    def _log(self, epoch: int, rows: list[dict[str, Any]]) -> None:
        check = {True: ", frozen until now: bitwise unchanged", False: ", frozen until now: CHANGED", None: ""}
        for row in rows:
            log.info(
                "%s: epoch %d: %s %s (%d tensors, %d params%s)%s",
                self.cfg.name,
                epoch,
                row["event"],
                row["target"],
                row["tensors"],
                row["params"],
                f", lr_scale {row['lr_scale']:g}" if "lr_scale" in row else "",
                check[row.get("unchanged_until_event")],
            )


def _owned_by(tensor: str, params: tuple[str, ...]) -> bool:
    """Whether a ledger tensor (parameter or BatchNorm buffer) belongs to one of ``params``' modules."""
    module = tensor.rsplit(".", 1)[0]
    return tensor in params or any(p.rsplit(".", 1)[0] == module for p in params)
