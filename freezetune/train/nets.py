"""What a training step actually runs on, for the plan in force: the model itself,
the model wrapped in DDP (torchrun), or the trainable suffix after a cached frozen
prefix (freezetune.train.cache), with the loaders that feed it.

DDP registers the parameters that require grad when it is built, so it is built
anew whenever the trainable set changes (Lightning #20340); the cache follows the
new frontier for the same reason, as :class:`~freezetune.train.cache_policy.CachePolicy`
decides: extended from the features it holds when the frozen prefix only grew, rebuilt
from the images otherwise, and under ``cache_features: auto`` only when the epochs left
repeat more prefix work than the build costs. With ``train.compile`` the net that trains
is compiled anew too (freezetune.train.compiled); the net that evaluates stays eager."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from freezetune.config import Config, ConfigError
from freezetune.data import Loaders
from freezetune.plan import FreezePlan, Schedule, apply_plan
from freezetune.train.cache import CacheRefused, FeatureCache, Split, build_cache, cached_loaders, in_order
from freezetune.train.cache_policy import (
    CacheAction,
    CacheDecision,
    CachePolicy,
    HeldCache,
    cache_on_refused,
    first_batch,
)
from freezetune.train.compiled import PhaseCompiler
from freezetune.train.distributed import Dist
from freezetune.utils import format_bytes

__all__ = ["CacheLifecycle", "TrainTarget"]

log = logging.getLogger(__name__)


class CacheLifecycle:
    """The feature cache across a run's phases: at each phase's start it asks the
    :class:`CachePolicy`, then builds, extends, keeps or drops the cache as it answers,
    and keeps summary.json's ``cache`` record (:attr:`record`)."""

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        loaders: Loaders,
        policy: CachePolicy,
        folder: Path,
        generator: torch.Generator,
    ) -> None:
        self.cfg, self.model, self.loaders, self.policy = cfg, model, loaders, policy
        self.folder, self.generator = folder, generator
        self.record: dict[str, Any] = {"mode": cfg.train.cache_features, "used": False, "reason": None}
        self._held: tuple[Split, FeatureCache] | None = None  # the cache in use, if any

    def check(self, schedule: Schedule, current: FreezePlan) -> None:
        """With ``train.cache_features: on``, refuse up front (ConfigError) if any phase's
        prefix cannot be cached; the model is left under ``current``."""
        if self.cfg.train.cache_features != "on":
            return
        if self.policy.distributed:
            raise ConfigError(
                ["train.cache_features: 'on' is not available under DDP (multi-process); use auto or off"]
            )
        try:
            for phase in schedule.phases:
                apply_plan(self.model, phase.plan)
                with self._rng_untouched():
                    self.record["check_max_abs_diff"] = self.policy.split(self.model, self._images()[0])[1]
        except CacheRefused as exc:
            raise cache_on_refused(str(exc), phase.start if schedule.changes else None) from None
        finally:
            apply_plan(self.model, current)

    def follow(self, epochs_left: int | None) -> tuple[nn.Module, DataLoader, DataLoader] | None:
        """The cache for the plan now applied to the model (``epochs_left``: the current epoch
        included, for ``cache_features: auto``): the suffix to train and the loaders over the
        cached features, or None to train on the model and the images."""
        previous, self._held = self._held, None
        d = self.policy.unavailable()
        if d is not None:
            self._note(d)
            return None
        with self._rng_untouched():
            held = HeldCache(previous[0], previous[1].storage == "memory") if previous is not None else None
            x, read_s = self._images()
            d = self.policy.decide(self.model, x, held, epochs_left, read_s=read_s)
            self._note(d)
            if d.builds:
                self._build(d, previous)
        if d.action is CacheAction.KEEP and previous is not None and d.split is not None:
            # The same frontier: the new cut trains on the features already cached. A new one
            # that would not pay: the earlier cache, cut where it was.
            self._held = (d.split, previous[1]) if d.split.frontier == previous[0].frontier else previous
        if self._held is None:
            return None
        split, cache = self._held
        # The suffix is made of the model's own modules: training it trains the model.
        return (split.suffix, *cached_loaders(cache, self.cfg.data.batch_size, self.generator))

    def _note(self, d: CacheDecision) -> None:
        """Keep ``d`` in the record and the log, as summary.json has always said it."""
        if d.check_max_abs_diff is not None:
            self.record["check_max_abs_diff"] = d.check_max_abs_diff
        if d.action is CacheAction.OFF:
            if not self.policy.distributed:
                self.record["reason"] = d.reason
            elif d.reason and not self.record["reason"]:  # say it once
                self.record["reason"] = d.reason
                log.info("%s: feature cache %s", self.cfg.name, d.reason)
        elif d.action is CacheAction.REFUSED:
            log.info("%s: feature cache not used: %s", self.cfg.name, d.reason)
            self.record.update(used=False, reason=d.reason)
        elif d.weighed is None and d.action in (CacheAction.SKIP, CacheAction.KEEP):  # decided by the counts alone
            log.info("%s: feature cache %s: %s", self.cfg.name, "kept" if d.used else "not used", d.reason)
            if not d.used:
                self.record.update(used=False, reason=d.reason)
        if d.weighed is not None:
            self._note_weighed(d)

    def _note_weighed(self, d: CacheDecision) -> None:
        """``cache_features: auto``'s decision, with the build's predicted seconds, to the log and the record."""
        row, w = d.to_json(), d.weighed
        assert w is not None
        self.record.setdefault("decisions", []).append(row)
        log.info(
            "%s: feature cache at '%s' from %s: %s (a build is ~%.2fs%s after %.2fs of set-up; %d epoch%s left would "
            "run the prefix over %d batches, ~%.2fs, the build over %d)",
            self.cfg.name,
            row["frontier"],
            row["from"],
            "built" if w.pays else "skipped, it would not pay for itself",
            row["predicted_build_s"],
            f" ({d.reading_s:.2f}s of it reading the images)" if d.reading_s > 0 else "",
            w.setup_s,
            w.epochs_left,
            "" if w.epochs_left == 1 else "s",
            w.epochs_left * w.batches_per_epoch,
            w.prefix_s,
            w.build_batches,
        )
        if not w.pays and not self.record["used"]:
            self.record["reason"] = f"at '{row['frontier']}': {d.reason}"

    def _build(self, d: CacheDecision, previous: tuple[Split, FeatureCache] | None) -> None:
        """Build the cache ``d`` asks for: at its frontier from the images or, for an extension,
        by running only the newly frozen part over ``previous``'s features."""
        split, extend = d.split, d.action is CacheAction.EXTEND
        assert split is not None
        source = previous[1] if extend and previous is not None else None
        datasets = (
            (source.train, source.val) if source is not None else (self.loaders.train.dataset, self.loaders.val.dataset)
        )
        cache = build_cache(
            self.model,
            d.extension if extend else split,  # type: ignore[arg-type]
            # Cached features are in memory already: workers would only copy them between processes.
            in_order(datasets, self.cfg.data.batch_size, 0 if source is not None else self.cfg.data.num_workers),
            self.policy.compute,
            self.cfg.train.cache_max_bytes,
            self.folder,
        )
        # What was predicted against what was spent, kept beside each other.
        built = {
            "frontier": split.frontier,
            "extended": extend,
            **cache.to_json(),
            "predicted_build_s": d.build_s,
            "setup_s": d.setup_s,
        }
        builds = self.record.get("builds", []) + [built]
        self.record.update(
            cache.to_json(),
            used=True,
            reason=None,
            frontier=split.frontier,
            first_trainable=split.first_trainable,
            builds=builds,
        )
        self.record["build_s"] = sum(b["build_s"] for b in builds)
        log.info(
            "%s: cached the frozen prefix's output (%s, %s of %s, %s): built in %.1fs, predicted %.1fs (reading the "
            "%s %.1fs, predicted %.1fs; set-up %.1fs)%s",
            self.cfg.name,
            split.frontier,
            format_bytes(cache.bytes),
            cache.to_json()["dtype"],
            cache.storage,
            cache.build_s,
            d.build_s or 0.0,
            "cached features" if extend else "images",
            cache.load_s,
            d.reading_s,
            d.setup_s or 0.0,
            ", extended from the cached features" if extend else "",
        )
        self._held = (split, cache)

    def _images(self) -> tuple[torch.Tensor, float]:
        """The first validation batch, what the split is checked and the prefix timed on, and the
        seconds reading it took (:func:`first_batch`)."""
        return first_batch(self.loaders.val.dataset, self.cfg.data.batch_size)

    def _rng_untouched(self) -> contextlib.AbstractContextManager:
        """Checking the cut and building the cache iterate DataLoaders, and each iteration of one
        without a generator draws from the global RNG: without this, a cached run's Dropout
        masks would differ from the uncached run's (and a resumed run's from the original's)."""
        device = self.policy.compute.device
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


class TrainTarget:
    """The net that trains, the net that evaluates, and their loaders, kept in step
    with the plan by :meth:`follow`: the model (in DDP under torchrun), or the suffix
    after a cached prefix (:class:`CacheLifecycle`), compiled with ``train.compile``
    (:class:`~freezetune.train.compiled.PhaseCompiler`)."""

    def __init__(
        self,
        cfg: Config,
        model: nn.Module,
        loaders: Loaders,
        device: torch.device,
        folder: Path,
        generator: torch.Generator,
        dist: Dist | None = None,
    ) -> None:
        self.cfg, self.model, self.loaders, self.device, self.dist = cfg, model, loaders, device, dist
        self.net: nn.Module = model  # what trains: the model, its cached suffix, or DDP around the model
        self.eval_net: nn.Module = model  # what evaluates: never DDP (its forward is a collective)
        self.train_loader: DataLoader = loaders.train
        self.val_loader: DataLoader = loaders.val
        n_train, n_val = len(loaders.train.dataset), len(loaders.val.dataset)  # type: ignore[arg-type]
        policy = CachePolicy.of(cfg, n_train, n_val, device, distributed=dist is not None)
        self.cache = CacheLifecycle(cfg, model, loaders, policy, folder, generator)
        self.compiler = PhaseCompiler(cfg.name, cfg.train.compile)
        self._made_for: FreezePlan | None = None  # the plan `net` and the loaders were made for

    @property
    def cache_info(self) -> dict[str, Any]:
        """summary.json's ``cache``: mode, use, reason, builds and auto's decisions."""
        return self.cache.record

    def check_cache(self, schedule: Schedule, current: FreezePlan) -> None:
        """With ``train.cache_features: on``, refuse up front (ConfigError) if any phase's
        prefix cannot be cached; the model is left under ``current``."""
        self.cache.check(schedule, current)

    def follow(self, plan: FreezePlan, epochs_left: int | None = None) -> None:
        """Make what trains fit ``plan`` (already applied to the model), compiled with
        ``train.compile``; nothing to do when it already does. ``epochs_left`` (the current
        one included) lets ``cache_features: auto`` skip a cache that would not pay."""
        if self._made_for is plan:
            return
        self._made_for = plan
        self.net = self.eval_net = self.model
        self.train_loader, self.val_loader = self.loaders.train, self.loaders.val
        cached = self.cache.follow(epochs_left)
        if self.dist is not None:
            self.net = self.dist.wrap(self.model, self.device)
            what = "the model in DDP"
        elif cached is not None:
            self.net, self.train_loader, self.val_loader = cached
            self.eval_net = self.net
            what = f"the suffix after the cached '{self.cache_info['frontier']}'"
        else:
            what = "the model"
        if self.cfg.train.compile:
            self.net = self.compiler.compile(self.net, what, plan.numel_trainable)

    def steps_done(self, durations: list[tuple[float, ...]]) -> None:
        """Note the first step after a (re)compilation (:meth:`PhaseCompiler.steps_done`)."""
        self.compiler.steps_done(durations)

    def compile_json(self) -> dict[str, Any]:
        """summary.json's ``compile`` (:meth:`PhaseCompiler.to_json`)."""
        return self.compiler.to_json()
