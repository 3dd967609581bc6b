"""A fine-tuning session across phases: the model, its optimizer and LR schedule,
what trains (freezetune.train.nets) and the ledger of frozen tensors
(freezetune.record.integrity), all kept in step when a schedule event changes the
trainable set; and the state that resumes it exactly.

freezetune.train.runner turns a config into a :class:`Trainer` and a run record;
freezetune.train.loop is the loop of one epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data.distributed import DistributedSampler

from freezetune.config import Config, ConfigError, Preprocessing
from freezetune.data import Loaders
from freezetune.measure import device_clock
from freezetune.models import weights_kind
from freezetune.plan import FreezePlan, apply_plan, describe
from freezetune.record import (
    MODEL_FORMAT,
    EpochResult,
    FrozenLedger,
    get_rng_state,
    load_payload,
    model_payload,
    set_rng_state,
)
from freezetune.train.auto import AutoFreezer
from freezetune.train.distributed import Dist, shard_loaders
from freezetune.train.loop import Diverged, EpochStats, LoopOptions, Progress, Resume, fit_epoch, steps_in
from freezetune.train.lr_schedule import LRSchedule, set_lr
from freezetune.train.nets import TrainTarget
from freezetune.train.optim import add_trainable, check_optimizer, group_table, make_optimizer, remove_frozen
from freezetune.train.setup import Prepared, schedule_for
from freezetune.utils.errors import first_line

__all__ = ["STATE_FORMAT", "Partial", "Trainer"]

log = logging.getLogger(__name__)

STATE_FORMAT = "freezetune-train-state/1"


@dataclass
class Partial:
    """A stopped epoch: how far it got, the loader generator state it started from, and
    the RNG states at the stop (restored once the batches already seen are skipped)."""

    epoch: int
    steps: int
    loss_sum: float
    samples: int
    generator: torch.Tensor
    rng: dict[str, Any]


class Trainer:
    """One run's training state across its phases; :meth:`fit` trains one epoch."""

    def __init__(self, cfg: Config, p: Prepared, loaders: Loaders, folder: Path, dist: Dist | None = None) -> None:
        self.cfg, self.p, self.model, self.device = cfg, p, p.model, p.device
        self.schedule, self.settings = p.schedule, p.settings
        self.dist = dist
        self.classes = loaders.classes
        # One generator shuffles every epoch, cached or not: the order does not
        # depend on when a cache was (re)built, and its state is saved with the rest.
        self.generator: torch.Generator = loaders.train.generator  # type: ignore[assignment]
        if dist is not None:  # DistributedSampler shuffles from (seed, epoch); batch_size is per process
            train, val = shard_loaders(loaders.train, loaders.val, dist, cfg.seed)
            loaders = dataclasses.replace(loaders, train=train, val=val)
        # Optimizer steps: with train.accumulate, several batches make one.
        self.steps_per_epoch = steps_in(len(loaders.train), cfg.train.accumulate, cfg.train.max_steps_per_epoch)
        # fp16's narrow range needs the loss scaled up for small gradients to survive; bf16 has fp32's range.
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.train.precision == "fp16" else None
        self.lr = LRSchedule(cfg.train.scheduler, self.steps_per_epoch, cfg.train.epochs)
        self.global_step = 0
        self.plan: FreezePlan = self.schedule.initial
        self.optimizer = make_optimizer(self.model, cfg.train.optimizer, self.settings, {}, 1, self.lr.factor(0))
        check_optimizer(self.optimizer, self.model)
        self.ledger = FrozenLedger(self.model, self.plan, cfg.freeze.frozen_dtype)  # digests as each tensor froze
        self.target = TrainTarget(cfg, self.model, loaders, self.device, folder, self.generator, dist)
        # freeze.preset auto: the policy that adds freeze events as training goes (freezetune.train.auto).
        self.auto = (
            AutoFreezer(self.model, describe(self.model), cfg.freeze.auto, cfg.train.epochs, self.device, dist)
            if cfg.freeze.preset == "auto"
            else None
        )
        self.events: list[dict[str, Any]] = []
        self.epochs: list[EpochResult] = []
        # Called after every optimizer step with (global step, mean loss tensor, {group name: lr}):
        # per-step logs (freezetune.record.logs); None: nothing to call.
        self.step_hook: Callable[[int, torch.Tensor, dict[str, float]], None] | None = None
        self._epoch_first_step = 0
        # Cumulative training seconds (EpochResult.train_s), a stopped epoch's part included.
        self.train_s = 0.0
        # Where each preprocessing value came from (freezetune.checks.resolve), kept across a resume:
        # a run resumed from its own config.yaml would otherwise say "config" for all of them.
        self.preprocessing_from: dict[str, str] = {}

    def check_cache_plan(self) -> None:
        """With cache_features: on, refuse up front if any phase's prefix cannot be cached."""
        self.target.check_cache(self.schedule, self.plan)

    # ------------------------------------------------------------------ phases

    def enter_phase(self, epoch: int, quiet: bool = False) -> list[dict[str, Any]]:
        """Apply the events that start at ``epoch``: requires_grad and BatchNorm modes,
        optimizer groups, the protected-tensor ledger; returns what was applied."""
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
            self.lr.factor(self.global_step),
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
        for row in [] if quiet else rows[:-1]:
            check = {True: ", frozen until now: bitwise unchanged", False: ", frozen until now: CHANGED", None: ""}
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
        return rows

    def replay_phases(self, through: int) -> None:
        """Re-enter every phase that starts by epoch ``through`` (resume): same groups, same order."""
        for phase in self.schedule.phases[1:]:
            if phase.start <= through:
                self.enter_phase(phase.start, quiet=True)  # already logged and recorded by the first run

    # ------------------------------------------------------------------ one epoch

    def fit(
        self,
        epoch: int,
        progress: Progress,
        stop: Callable[[], bool] | None,
        count_saved: bool,
        partial: Partial | None = None,
    ) -> tuple[EpochResult | None, EpochStats, torch.Tensor]:
        """Train and evaluate one epoch; returns (result or None if stopped, stats, the
        generator state the epoch started from)."""
        target = self.target
        setup_start = device_clock(self.device)
        target.follow(self.plan, self.cfg.train.epochs - epoch + 1)  # builds the cache, compiles: training cost
        setup_s = device_clock(self.device) - setup_start
        if isinstance(target.train_loader.sampler, DistributedSampler):
            target.train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        resume = None
        if partial is not None:
            self.generator.set_state(partial.generator)
            resume = Resume(partial.steps, partial.loss_sum, partial.samples, lambda: set_rng_state(partial.rng))
        start_state = self.generator.get_state()
        first = (epoch - 1) * self.steps_per_epoch
        self._epoch_first_step = first

        def before_step(i: int) -> None:
            self.global_step = first + i
            set_lr(self.optimizer, self.lr.factor(self.global_step))

        t = self.cfg.train
        options = LoopOptions(
            t.max_steps_per_epoch,
            progress,
            count_saved,
            before_step,
            stop,
            resume,
            check_finite=self.dist is None,
            max_nonfinite=t.max_nonfinite,
            precision=t.precision,
            channels_last=t.channels_last,
            accumulate=t.accumulate,
            clip_grad_norm=t.clip_grad_norm,
            label_smoothing=t.label_smoothing,
            scaler=self.scaler,
            on_step=self._on_step if self.step_hook is not None else None,
            after_backward=self.auto.sample if self.auto is not None else None,
        )
        result, stats = fit_epoch(
            epoch,
            target.net,
            self.optimizer,
            target.train_loader,
            target.val_loader,
            self.device,
            options,
            eval_model=target.eval_net,
            reduce=self.dist.sum_ if self.dist is not None else None,
        )
        self.global_step = first + stats.steps
        target.steps_done(stats.durations)  # train.compile: the first step after a compile is its cost
        self.check_finite(epoch)
        if result is not None:
            self.train_s += setup_s + result.epoch_time_s
            result.train_s = self.train_s
            self.epochs.append(result)
        else:  # stopped part-way: the steps it took (fit_epoch times only whole epochs)
            self.train_s += setup_s + sum(sum(d) for d in stats.durations)
        return result, stats, start_state

    def decide_auto(self, epoch: int) -> dict[str, Any] | None:
        """After ``epoch`` (freeze.preset auto): the policy decides; the stages it freezes become
        freeze events at ``epoch + 1`` of a rebuilt schedule, which :meth:`enter_phase` applies
        like any other. Returns the decision as its events.jsonl row (None without auto)."""
        if self.auto is None:
            return None
        decision, stages = self.auto.end_epoch(epoch)
        row = self.auto.decisions[-1]
        rates = ", ".join(f"{s} {r:.3g}" if r is not None else f"{s} -" for s, r in decision.rates.items())
        if stages:
            self.schedule = schedule_for(self.cfg, describe(self.model), self.auto.freeze_events())
            log.info(
                "%s: auto after epoch %d: freezing %s from epoch %d (gradient-norm change rates: %s; threshold %g)",
                self.cfg.name,
                epoch,
                ", ".join(stages),
                epoch + 1,
                rates or "none",
                self.auto.settings.threshold,
            )
        else:
            log.info("%s: auto after epoch %d: nothing to freeze (%s)", self.cfg.name, epoch, decision.reason)
        return row

    def _on_step(self, step: int, loss: torch.Tensor) -> None:
        if self.step_hook is not None:
            lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            self.step_hook(self._epoch_first_step + step, loss, lrs)

    def check_finite(self, epoch: int) -> None:
        """Raise :class:`Diverged` when a trainable parameter holds NaN or inf: such weights are
        never checkpointed (under DDP, where steps are not checked one by one, this is the check)."""
        for p in self.model.parameters():
            if p.requires_grad and not bool(torch.isfinite(p).all()):
                raise Diverged(None, self.epochs[-1].train_loss if self.epochs else None, "weights", epoch)

    # ------------------------------------------------------------------ state

    def state_dict(
        self, epoch: int, stats: EpochStats | None, start_state: torch.Tensor | None, resolved: dict
    ) -> dict:
        """Everything a resume needs. ``stats`` set: epoch ``epoch`` stopped part-way."""
        partial = None
        if stats is not None and stats.interrupted:
            partial = {"steps": stats.steps, "loss_sum": stats.loss_sum, "samples": stats.samples}
            if self.dist is not None:  # each rank's own running sums (collective, like the RNG states)
                partial["per_rank"] = self.dist.gather((stats.loss_sum, stats.samples))
        return {
            "format": STATE_FORMAT,
            "config": resolved,
            "epoch": epoch,
            "partial": partial,
            "global_step": self.global_step,
            **self.payload(self.cfg.train.save, epoch),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "group_names": [g.get("name") for g in self.optimizer.param_groups],
            "rng": get_rng_state(),
            # Every rank's own generators (collective: every rank builds the state, rank 0 writes it).
            "rng_per_rank": self.dist.gather(get_rng_state()) if self.dist is not None else None,
            "world_size": self.dist.world if self.dist is not None else 1,
            # A stopped epoch restarts its shuffle from where that epoch began.
            "generator": start_state if partial else self.generator.get_state(),
            "protected": self.ledger.digests,
            "events": self.events,
            "epochs": [vars(e) for e in self.epochs],
            "train_s": self.train_s,
            "preprocessing_from": self.preprocessing_from,
            "auto": self.auto.state_dict() if self.auto is not None else None,
        }

    def model_file(self, save: str, epoch: int, resolved: dict[str, Any]) -> dict[str, Any]:
        """What ``model.pt`` and ``best.pt`` hold: the weights after ``epoch`` (``save``: full or
        delta), the resolved config, the class names in output order and the preprocessing:
        all that predict, evaluate and export need (freezetune.infer)."""
        return {
            **self.payload(save, epoch),
            "format": MODEL_FORMAT,
            "config": resolved,
            "epoch": epoch,
            "num_classes": self.p.num_classes,
            "classes": self.classes,
            "preprocessing": Preprocessing.of(self.cfg.data).to_json(),
            # Relative paths of the config (data.root) are relative to this folder: evaluate and
            # export, run from elsewhere, find the run's data through it.
            "cwd": os.getcwd(),
        }

    def payload(self, save: str, epoch: int) -> dict[str, Any]:
        """The model as ``save`` (full or delta) stores it after ``epoch``: a delta leaves out
        what stayed frozen (and pinned) in every phase so far, and records how to rebuild it."""
        model = dict(vars(self.cfg.model))
        if weights_kind(model["arch"], model["weights"]) == "file":  # found again from any working directory
            model["weights"] = str(Path(model["weights"]).expanduser().resolve())
        # The seed rebuilds a random base (model.weights: null) bitwise: prepare_model seeds, then builds.
        base = {"model": model, "num_classes": self.p.num_classes, "seed": self.cfg.seed}
        return model_payload(
            self.model, save, self.schedule.frozen_throughout(epoch), self.schedule.pinned_throughout(epoch), base
        )

    def load_state_dict(self, state: dict[str, Any], where: str) -> Partial | None:
        """Restore a saved state into this freshly prepared trainer."""
        epoch, partial = state["epoch"], state["partial"]
        world = self.dist.world if self.dist is not None else 1
        if state.get("world_size", 1) != world:
            raise ConfigError(
                [
                    f"resume: {where} was saved by {state.get('world_size', 1)} process(es); "
                    f"resume it with the same number (now {world})"
                ]
            )
        rank = self.dist.rank if self.dist is not None else 0
        rng = state["rng_per_rank"][rank] if state.get("rng_per_rank") else state["rng"]
        if self.auto is not None and state.get("auto"):  # the decisions so far, before their phases replay
            self.auto.load_state_dict(state["auto"])
            self.schedule = schedule_for(self.cfg, describe(self.model), self.auto.freeze_events())
        self.replay_phases(epoch)  # a stopped epoch has entered its phase too
        names = [g.get("name") for g in self.optimizer.param_groups]
        if names != state["group_names"]:
            raise ConfigError(
                [f"resume: {where} has optimizer groups {state['group_names']}, this config makes {names}"]
            )
        try:
            load_payload(self.model, state, where)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])  # the loss scale it had reached
        except (RuntimeError, ValueError, KeyError) as exc:  # shapes or groups that do not fit
            first = first_line(exc) or type(exc).__name__
            raise ConfigError(
                [
                    f"resume: {where} does not fit the model this config builds now (did the data's classes change?): "
                    f"{first[:200]}"
                ]
            ) from None
        check_optimizer(self.optimizer, self.model)
        self.global_step = state["global_step"]
        self.ledger.digests = state["protected"]
        self.events = list(state["events"])
        self.preprocessing_from = dict(state.get("preprocessing_from") or self.preprocessing_from)
        self.epochs = [EpochResult(**e) for e in state["epochs"]]
        self.train_s = state.get("train_s", self.epochs[-1].train_s if self.epochs else 0.0)
        if partial:
            loss_sum, samples = (
                partial["per_rank"][rank] if partial.get("per_rank") else (partial["loss_sum"], partial["samples"])
            )
            return Partial(epoch, partial["steps"], loss_sum, samples, state["generator"], rng)
        self.generator.set_state(state["generator"])
        set_rng_state(rng)
        return None

    def groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups as summary.json lists them."""
        return group_table(self.optimizer)


def _owned_by(tensor: str, params: tuple[str, ...]) -> bool:
    """Whether a protected tensor (parameter or BatchNorm buffer) belongs to one of ``params``' modules."""
    module = tensor.rsplit(".", 1)[0]
    return tensor in params or any(p.rsplit(".", 1)[0] == module for p in params)
