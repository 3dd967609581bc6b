"""A fine-tuning session across phases: it fits one epoch at a time and keeps the state
that resumes it exactly. Its parts each do one job: the phase changes
(freezetune.train.phases), what trains (freezetune.train.nets), the auto policy
(freezetune.train.auto) and the model files (freezetune.train.files).

freezetune.train.runner turns a config into a :class:`Trainer` and a run record;
freezetune.train.loop is the loop of one epoch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data.distributed import DistributedSampler

from freezetune.config import Config, ConfigError
from freezetune.data import Loaders
from freezetune.measure import device_clock
from freezetune.plan import describe
from freezetune.record import EpochResult, get_rng_state, load_payload, set_rng_state
from freezetune.train.auto import AutoFreezer
from freezetune.train.distributed import Dist, shard_loaders
from freezetune.train.files import ModelFiles
from freezetune.train.loop import (
    Diverged,
    EpochStats,
    Evaluation,
    LoopOptions,
    Progress,
    Resume,
    epoch_divergence,
    fit_epoch,
    no_progress,
    nonfinite_buffers,
    steps_in,
)
from freezetune.train.lr_schedule import LRSchedule, set_lr
from freezetune.train.nets import TrainTarget
from freezetune.train.optim import check_optimizer, group_table, make_optimizer
from freezetune.train.phases import Phases
from freezetune.train.setup import Prepared, schedule_for
from freezetune.utils.errors import first_line

__all__ = ["STATE_FORMAT", "EpochHooks", "Partial", "Trainer"]

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


@dataclass(frozen=True)
class EpochHooks:
    """What the caller's side runs during an epoch's steps."""

    progress: Progress = no_progress  # wraps the epoch's batches (the CLI passes tqdm bars)
    stop: Callable[[], bool] = lambda: False  # asked after each step; True stops the epoch (Ctrl-C)
    # After every optimizer step with (global step, mean loss tensor, {group name: lr}):
    # per-step logs (freezetune.record.logs).
    on_step: Callable[[int, torch.Tensor, dict[str, float]], None] | None = None


class Trainer:
    """One run's training state across its phases; :meth:`fit` trains one epoch, and
    :meth:`state_dict` is where the run stands after it.

    Args:
        folder: the run folder (a feature cache too large for memory spills there).
        resolved: the resolved config as config.yaml records it; the model files carry it.
        preprocessing_from: where each preprocessing value came from (freezetune.checks.resolve).
    """

    def __init__(
        self,
        cfg: Config,
        p: Prepared,
        loaders: Loaders,
        folder: Path,
        dist: Dist | None = None,
        resolved: dict[str, Any] | None = None,
        preprocessing_from: dict[str, str] | None = None,
    ) -> None:
        self.cfg, self.model, self.device = cfg, p.model, p.device
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
        self.optimizer = make_optimizer(self.model, cfg.train.optimizer, p.settings, {}, 1, self.lr.factor(0))
        check_optimizer(self.optimizer, self.model)
        self.phases = Phases(cfg, self.model, self.optimizer, p.schedule, p.settings, dist)
        self.resolved = resolved if resolved is not None else {}
        self.files = ModelFiles(
            cfg, self.model, p.num_classes, self.classes, self.resolved, lambda: self.phases.ledger.digests
        )
        self.target = TrainTarget(cfg, self.model, loaders, self.device, folder, self.generator, dist)
        # freeze.preset auto: the policy that adds freeze events as training goes (freezetune.train.auto).
        self.auto = (
            AutoFreezer(self.model, describe(self.model), cfg.freeze.auto, cfg.train.epochs, self.device, dist)
            if cfg.freeze.preset == "auto"
            else None
        )
        self.epochs: list[EpochResult] = []
        self._nonfinite_by_design = nonfinite_buffers(self.model)  # a mask of -inf: not a divergence
        # Cumulative training seconds (EpochResult.train_s), a stopped epoch's part included.
        self.train_s = 0.0
        # Kept across a resume: a run resumed from its own config.yaml would otherwise say
        # "config" for every preprocessing value.
        self.preprocessing_from: dict[str, str] = dict(preprocessing_from or {})
        # The epoch in hand, what state_dict() saves: the last one fitted (or resumed), how
        # far it got, and the generator state it started from.
        self.epoch = 0
        self._stats: EpochStats | None = None
        self._start_state: torch.Tensor | None = None
        self._partial: Partial | None = None  # a stopped epoch resumed: the next fit continues it
        self._first_step = 0
        self._asked_after = 0  # the epoch in hand's steps after which the loop last asked whether to stop

    def check_cache_plan(self) -> None:
        """With cache_features: on, refuse up front if any phase's prefix cannot be cached."""
        self.target.check_cache(self.phases.schedule, self.phases.plan)

    def enter_phase(self, epoch: int) -> list[dict[str, Any]]:
        """Apply the events that start at ``epoch`` (freezetune.train.phases); returns them."""
        return self.phases.enter(epoch, self.lr.factor(self.global_step))

    # ------------------------------------------------------------------ one epoch

    def fit(self, epoch: int, hooks: EpochHooks, count_saved: bool) -> tuple[EpochResult | None, EpochStats]:
        """Train and evaluate one epoch (a resumed stopped one from where it stopped); returns
        its result (None if stopped) and the training pass's stats."""
        target = self.target
        setup_start = device_clock(self.device)
        target.follow(self.phases.plan, self.cfg.train.epochs - epoch + 1)  # builds the cache, compiles
        setup_s = device_clock(self.device) - setup_start
        if isinstance(target.train_loader.sampler, DistributedSampler):
            target.train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        resume, partial, self._partial = None, self._partial, None
        if partial is not None:
            self.generator.set_state(partial.generator)
            resume = Resume(partial.steps, partial.loss_sum, partial.samples, lambda: set_rng_state(partial.rng))
        self.epoch, self._start_state = epoch, self.generator.get_state()
        self._first_step = first = (epoch - 1) * self.steps_per_epoch
        self._asked_after = partial.steps if partial is not None else 0
        options = self._loop_options(hooks, count_saved, resume)
        reduce = self.dist.sum_ if self.dist is not None else None
        evaluation = Evaluation(target.val_loader, target.eval_net, reduce)
        result, stats = fit_epoch(
            epoch, target.net, self.optimizer, target.train_loader, self.device, options, evaluation
        )
        self.global_step = first + stats.steps
        self._stats = stats
        target.steps_done(stats.durations)  # train.compile: the first step after a compile is its cost
        self._check_finite(epoch, result)
        if result is not None:
            self.train_s += setup_s + result.epoch_time_s
            result.train_s = self.train_s
            self.epochs.append(result)
        else:  # stopped part-way: the steps it took (fit_epoch times only whole epochs)
            self.train_s += setup_s + sum(sum(d) for d in stats.durations)
        return result, stats

    def _check_finite(self, epoch: int, result: EpochResult | None) -> None:
        """Raise :class:`Diverged` when ``epoch`` left a non-finite number the user would rely on
        (freezetune.train.loop.epoch_divergence), before anything of it is recorded or saved. The
        tensors the ledger protects are left out (verified bitwise unchanged), and so are buffers
        that were not finite before training began."""
        last = self.epochs[-1].train_loss if self.epochs else None
        skip = self._nonfinite_by_design | self.phases.ledger.digests.keys()
        diverged = epoch_divergence(self.model, epoch, result, last, skip)
        # Each rank's BatchNorm statistics are its own between DDP's broadcasts: all ranks stop
        # together, or the others would wait for the stopped one at the next collective.
        if self.dist is not None and self.dist.any(diverged is not None, self.device) and diverged is None:
            diverged = Diverged(None, last, "BatchNorm running statistics on another process", epoch)
        if diverged is not None:
            raise diverged

    def asks_over(self) -> bool:
        """Whether the epoch in hand will not ask again whether to stop: the loop asks after
        each step but its last, so a Ctrl-C from then on is seen only once the epoch is over."""
        return self._asked_after >= self.steps_per_epoch - 1

    def _loop_options(self, hooks: EpochHooks, count_saved: bool, resume: Resume | None) -> LoopOptions:
        t = self.cfg.train

        def before_step(i: int) -> None:
            self.global_step = self._first_step + i
            set_lr(self.optimizer, self.lr.factor(self.global_step))

        def stop() -> bool:
            self._asked_after = self.global_step - self._first_step + 1  # after step i + 1 (before_step's i)
            return hooks.stop()

        def on_step(step: int, loss: torch.Tensor) -> None:
            assert hooks.on_step is not None
            lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            hooks.on_step(self._first_step + step, loss, lrs)

        return LoopOptions(
            t.max_steps_per_epoch,
            hooks.progress,
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
            on_step=on_step if hooks.on_step is not None else None,
            after_backward=self.auto.sample if self.auto is not None else None,
        )

    def decide_auto(self) -> dict[str, Any] | None:
        """After the epoch just fitted (freeze.preset auto): the policy decides; the stages it
        freezes become freeze events at the next epoch of a rebuilt schedule, which
        :meth:`enter_phase` applies like any other. Returns the decision as its events.jsonl
        row (None without auto)."""
        if self.auto is None:
            return None
        decision, stages = self.auto.end_epoch(self.epoch)
        if stages:
            self.phases.reschedule(schedule_for(self.cfg, describe(self.model), self.auto.freeze_events()))
        self.auto.log_decision(self.cfg.name, self.epoch, decision, stages)
        return self.auto.decisions[-1]

    # ------------------------------------------------------------------ files

    def model_file(self, save: str, shared: bool = False) -> dict[str, Any]:
        """What ``model.pt`` and ``best.pt`` hold after the epoch just fitted (``save``: full or
        delta; ``shared``: the frozen tensors by reference, as best.pt holds them): all that
        predict, evaluate and export need (freezetune.train.files)."""
        return self.files.model_file(save, self.epoch, self.phases.schedule, shared)

    def frozen_store(self) -> dict[str, Any] | None:
        """What ``frozen.pt`` holds, the run's one copy of the tensors best.pt and checkpoint.pt
        refer to; None when they refer to nothing (freezetune.train.files)."""
        return self.files.frozen_store(self.phases.schedule)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: the run after its last epoch, or part-way through the
        epoch a stop ended."""
        stats, dist = self._stats, self.dist
        partial = None
        if stats is not None and stats.interrupted:
            partial = {"steps": stats.steps, "loss_sum": stats.loss_sum, "samples": stats.samples}
            if dist is not None:  # each rank's own running sums (collective, like the RNG states)
                partial["per_rank"] = dist.gather((stats.loss_sum, stats.samples))
        return {
            "format": STATE_FORMAT,
            "config": self.resolved,
            "epoch": self.epoch,
            "partial": partial,
            "global_step": self.global_step,
            **self.files.payload(self.cfg.train.save, self.epoch, self.phases.schedule, shared=True),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "group_names": [g.get("name") for g in self.optimizer.param_groups],
            "rng": get_rng_state(),
            # Every rank's own generators (collective: every rank builds the state, rank 0 writes it).
            "rng_per_rank": dist.gather(get_rng_state()) if dist is not None else None,
            "world_size": dist.world if dist is not None else 1,
            # A stopped epoch restarts its shuffle from where that epoch began.
            "generator": self._start_state if partial else self.generator.get_state(),
            "ledger": self.phases.ledger.digests,
            "events": self.phases.events,
            "epochs": [vars(e) for e in self.epochs],
            "train_s": self.train_s,
            "preprocessing_from": self.preprocessing_from,
            "auto": self.auto.state_dict() if self.auto is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], where: str) -> Partial | None:
        """Restore a saved state into this freshly prepared trainer; returns the stopped epoch
        it was saved in, if any, which the next :meth:`fit` continues."""
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
            self.phases.reschedule(schedule_for(self.cfg, describe(self.model), self.auto.freeze_events()))
        self.phases.replay(epoch, self.lr.factor(self.global_step))  # a stopped epoch has entered its phase too
        self._load_weights(state, where)
        self.global_step = state["global_step"]
        self.phases.ledger.digests = (
            state["ledger"] if "ledger" in state else state["protected"]
        )  # "protected" before the glossary
        self.phases.events = list(state["events"])
        self.preprocessing_from = dict(state.get("preprocessing_from") or self.preprocessing_from)
        self.epochs = [EpochResult(**e) for e in state["epochs"]]
        self.train_s = state.get("train_s", self.epochs[-1].train_s if self.epochs else 0.0)
        self.epoch = epoch
        if partial:
            loss_sum, samples = (
                partial["per_rank"][rank] if partial.get("per_rank") else (partial["loss_sum"], partial["samples"])
            )
            self._partial = Partial(epoch, partial["steps"], loss_sum, samples, state["generator"], rng)
            return self._partial
        self.generator.set_state(state["generator"])
        set_rng_state(rng)
        return None

    def _load_weights(self, state: dict[str, Any], where: str) -> None:
        """The model, optimizer and loss scaler of ``state``, refused as a config error when they
        do not fit what this config builds."""
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

    def groups(self) -> list[dict[str, Any]]:
        """The optimizer's groups as summary.json lists them."""
        return group_table(self.optimizer)
