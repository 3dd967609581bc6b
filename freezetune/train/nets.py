"""What a training step actually runs on, for the plan in force: the model itself,
the model wrapped in DDP (torchrun), or the trainable suffix after a cached frozen
prefix (freezetune.train.cache), with the loaders that feed it.

DDP registers the parameters that require grad when it is built, so it is built
anew whenever the trainable set changes (Lightning #20340); the cache is rebuilt
at the new frontier for the same reason. With ``train.compile`` the net that trains
is compiled anew too (its graph guards on every parameter's requires_grad); the net
that evaluates stays eager."""

from __future__ import annotations

import contextlib
import logging
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from freezetune.config import Config, ConfigError
from freezetune.data import Loaders
from freezetune.measure import device_clock
from freezetune.plan import FreezePlan, Schedule, apply_plan
from freezetune.train.cache import (
    CacheRefused,
    Compute,
    Split,
    build_cache,
    cached_loaders,
    check_split,
    prefix_problem,
    split_model,
)
from freezetune.train.distributed import Dist
from freezetune.utils import eval_mode

__all__ = ["TrainTarget", "cache_on_refused", "compute_of", "preview_cache"]

log = logging.getLogger(__name__)


def cache_on_refused(reason: str, epoch: int | None = None) -> ConfigError:
    """The config error for ``train.cache_features: on`` when the cache cannot be used
    (``epoch``: the phase it fails in, for a schedule)."""
    at = f" (from epoch {epoch})" if epoch is not None else ""
    return ConfigError([f"train.cache_features: 'on', but the frozen prefix cannot be cached{at}: {reason}"])


def compute_of(cfg: Config, device: torch.device) -> Compute:
    """How the run's training step runs the network (precision, memory format) on ``device``."""
    return Compute(device, cfg.train.precision, cfg.train.channels_last)


def _dynamo_counts() -> tuple[int, int]:
    """(graphs compiled, graph breaks) so far in this process, from torch._dynamo's counters."""
    from torch._dynamo.utils import counters  # here: importing dynamo takes a second, only compile needs it

    return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


class TrainTarget:
    """The net that trains, the net that evaluates, and their loaders, kept in step
    with the plan by :meth:`follow`."""

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
        self.cfg, self.model, self.loaders, self.device = cfg, model, loaders, device
        self.folder, self.generator, self.dist = folder, generator, dist
        self.net: nn.Module = model  # what trains: the model, its cached suffix, or DDP around the model
        self.eval_net: nn.Module = model  # what evaluates: never DDP (its forward is a collective)
        self.train_loader: DataLoader = loaders.train
        self.val_loader: DataLoader = loaders.val
        self.cache_info: dict[str, Any] = {"mode": cfg.train.cache_features, "used": False, "reason": None}
        self.compute = compute_of(cfg, device)
        # One entry per compiled phase; see compile_json.
        self._compiles: list[dict[str, Any]] = []
        self._counts_at_compile = (0, 0)
        self._made_for: FreezePlan | None = None  # the plan `net` and the loaders were made for

    def check_cache(self, schedule: Schedule, current: FreezePlan) -> None:
        """With ``train.cache_features: on``, refuse up front (ConfigError) if any phase's
        prefix cannot be cached; the model is left under ``current``."""
        if self.cfg.train.cache_features != "on":
            return
        if self.dist is not None:
            raise ConfigError(
                ["train.cache_features: 'on' is not available under DDP (multi-process); use auto or off"]
            )
        try:
            for phase in schedule.phases:
                apply_plan(self.model, phase.plan)
                with self._rng_untouched():
                    self._split()
        except CacheRefused as exc:
            raise cache_on_refused(str(exc), phase.start if schedule.changes else None) from None
        finally:
            apply_plan(self.model, current)

    def follow(self, plan: FreezePlan) -> None:
        """Make what trains fit ``plan`` (already applied to the model), compiled with
        ``train.compile``; nothing to do when it already does."""
        if self._made_for is plan:
            return
        self._made_for = plan
        self._build()
        if self.cfg.train.compile:
            self._compile(plan)

    def _build(self) -> None:
        self.net = self.eval_net = self.model
        self.train_loader, self.val_loader = self.loaders.train, self.loaders.val
        if self.dist is not None:
            self.net = self.dist.wrap(self.model, self.device)
            if self.cfg.train.cache_features != "off" and not self.cache_info["reason"]:  # say it once
                self.cache_info["reason"] = (
                    "off under DDP (multi-process): the cache would bypass DDP's gradient all-reduce"
                )
                log.info("%s: feature cache %s", self.cfg.name, self.cache_info["reason"])
            return
        if self.cfg.train.cache_features == "off":
            self.cache_info["reason"] = "train.cache_features: off"
            return
        try:
            with self._rng_untouched():
                split = self._split()
        except CacheRefused as exc:
            if self.cfg.train.cache_features == "on":
                raise cache_on_refused(str(exc)) from None
            log.info("%s: feature cache not used: %s", self.cfg.name, exc)
            self.cache_info.update(used=False, reason=str(exc))
            return
        with self._rng_untouched():
            self._use_cache(split)

    # ------------------------------------------------------------------ torch.compile

    def _compile(self, plan: FreezePlan) -> None:
        """Compile ``net`` for the phase ``plan`` starts. Dynamo guards each graph on the
        requires_grad of every parameter it reads, so the previous phase's graphs can never run
        again; they are dropped (torch._dynamo.reset) rather than left to count towards dynamo's
        recompile limit (8 per function), past which it would run that function eagerly. ``eval_net``
        stays eager: compiled, evaluation under inference_mode in eval mode would be other graphs,
        compiled again in each phase for a few batches."""
        import torch._dynamo  # here: importing dynamo takes a second, only train.compile needs it

        self._close_compile()
        torch._dynamo.reset()
        what = "the model in DDP" if self.dist is not None else "the model"
        if self.net is not self.model and self.dist is None:
            what = f"the suffix after the cached '{self.cache_info['frontier']}'"
        log.info(
            "%s: compiling the trained part for the new phase (%s, %s trainable parameters); "
            "the first step pays for the compilation",
            self.cfg.name,
            what,
            f"{plan.numel_trainable:,}",
        )
        self.net = torch.compile(self.net)
        self._counts_at_compile = _dynamo_counts()
        self._compiles.append(
            {"net": what, "trainable_params": plan.numel_trainable, "graphs": None, "graph_breaks": None}
        )

    def _close_compile(self) -> None:
        """Count what dynamo compiled for the phase now in force (before the next one starts)."""
        if self._compiles and self._compiles[-1]["graphs"] is None:
            graphs, breaks = _dynamo_counts()
            self._compiles[-1].update(
                graphs=graphs - self._counts_at_compile[0], graph_breaks=breaks - self._counts_at_compile[1]
            )

    def steps_done(self, durations: list[tuple[float, ...]]) -> None:
        """Note the first step after a (re)compilation, from a training pass's step durations
        (data, forward, backward, optimizer; freezetune.train.loop): it includes the compile."""
        if not self._compiles or "first_step_s" in self._compiles[-1] or not durations:
            return
        steps = [sum(d) for d in durations]
        self._compiles[-1]["first_step_s"] = steps[0]
        self._compiles[-1]["later_step_s"] = statistics.median(steps[1:]) if len(steps) > 1 else None
        log.info("%s: compiled; the first step took %.1fs", self.cfg.name, steps[0])

    def compile_json(self) -> dict[str, Any]:
        """summary.json's ``compile``: whether it was on and, per compiled phase, what was
        compiled, the graphs dynamo compiled while it lasted (one, or two when an epoch's last
        batch is smaller: a graph with a dynamic batch size), graph breaks, and the first step's
        seconds (the compilation) next to the median of the other steps of that epoch."""
        self._close_compile()
        return {"enabled": self.cfg.train.compile, "phases_compiled": len(self._compiles), "phases": self._compiles}

    def _rng_untouched(self) -> contextlib.AbstractContextManager:
        """Checking the cut and building the cache iterate DataLoaders, and each iteration of one
        without a generator draws from the global RNG: without this, a cached run's Dropout
        masks would differ from the uncached run's (and a resumed run's from the original's)."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _split(self) -> Split:
        problem = prefix_problem(self.cfg.data.augment)
        if problem:
            raise CacheRefused(problem)
        split = split_model(self.model)
        x, _ = next(iter(self.loaders.val))
        self.cache_info["check_max_abs_diff"] = check_split(self.model, split, x, self.compute)
        return split

    def _use_cache(self, split: Split) -> None:
        cache = build_cache(
            self.model,
            split,
            self.loaders.train.dataset,
            self.loaders.val.dataset,
            self.cfg.data.batch_size,
            self.compute,
            self.cfg.train.cache_max_bytes,
            self.folder,
        )
        builds = self.cache_info.get("builds", []) + [{"frontier": split.frontier, **cache.to_json()}]
        self.cache_info.update(
            cache.to_json(),
            used=True,
            reason=None,
            frontier=split.frontier,
            first_trainable=split.first_trainable,
            builds=builds,
        )
        self.cache_info["build_s"] = sum(b["build_s"] for b in builds)
        log.info(
            "%s: cached the frozen prefix's output (%s, %.1f MiB of %s, %s) in %.1fs",
            self.cfg.name,
            split.frontier,
            cache.bytes / 2**20,
            cache.to_json()["dtype"],
            cache.storage,
            cache.build_s,
        )
        # The suffix is made of the model's own modules: training it trains the model.
        self.net = self.eval_net = split.suffix
        self.train_loader, self.val_loader = cached_loaders(cache, self.cfg.data.batch_size, self.generator)


@torch.no_grad()
def preview_cache(cfg: Config, model: nn.Module, device: torch.device, n_images: int) -> dict[str, Any]:
    """What the feature cache would be for the plan applied to ``model``, without data:
    whether it is used, its frontier, its size for ``n_images`` (train + val) in the dtype the
    prefix produces in ``train.precision``, where it would be kept, and its build time predicted
    from one timed batch of the configured shape.

    Returns:
        ``{"used": False, "reason": ...}`` or ``{"used": True, "frontier", "first_trainable",
        "shape", "dtype", "bytes", "storage", "build_s"}``.
    """
    if cfg.train.cache_features == "off":
        return {"used": False, "reason": "train.cache_features: off"}
    problem = prefix_problem(cfg.data.augment)
    try:
        if problem:
            raise CacheRefused(problem)
        split = split_model(model)
    except CacheRefused as exc:
        return {"used": False, "reason": str(exc)}
    # A few images, timed and scaled: a full batch of a ViT at 224 px would take plan seconds.
    n, size = min(cfg.data.batch_size, 4), cfg.data.image_size
    compute = compute_of(cfg, device)
    x = compute.input(torch.randn(n, 3, size, size))
    times = []
    with eval_mode(model), compute.autocast():
        features = split.prefix(x)  # warm-up: allocator, kernel choice
        for _ in range(3):  # the median of three: one slow moment of the machine does not decide it
            start = device_clock(device)
            split.prefix(x)
            times.append(device_clock(device) - start)
    batch_s = sorted(times)[1]
    per_image = features[0].numel() * features.element_size() + 8  # and its int64 label
    total = per_image * n_images
    return {
        "used": True,
        "frontier": split.frontier,
        "first_trainable": split.first_trainable,
        "shape": list(features.shape[1:]),
        "dtype": str(features.dtype).removeprefix("torch."),
        "bytes": total,
        "storage": "memory" if total <= cfg.train.cache_max_bytes else "memmap",
        "build_s": batch_s * n_images / n,
    }
