"""What a training step actually runs on, for the plan in force: the model itself,
the model wrapped in DDP (torchrun), or the trainable suffix after a cached frozen
prefix (freezetune.train.cache), with the loaders that feed it.

DDP registers the parameters that require grad when it is built, so it is built
anew whenever the trainable set changes (Lightning #20340); the cache follows the
new frontier for the same reason: extended from the features it holds when the
frozen prefix only grew, rebuilt from the images otherwise, and under
``cache_features: auto`` only when the epochs left repeat more prefix work than the
build costs (:func:`cache_pays`). With ``train.compile`` the net that trains
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
    FeatureCache,
    Split,
    build_cache,
    cached_loaders,
    check_split,
    prefix_problem,
    split_model,
)
from freezetune.train.distributed import Dist
from freezetune.utils import eval_mode

__all__ = [
    "TrainTarget",
    "cache_batches",
    "cache_on_refused",
    "cache_pays",
    "cache_skip_reason",
    "compute_of",
    "preview_cache",
]

log = logging.getLogger(__name__)


def cache_on_refused(reason: str, epoch: int | None = None) -> ConfigError:
    """The config error for ``train.cache_features: on`` when the cache cannot be used
    (``epoch``: the phase it fails in, for a schedule)."""
    at = f" (from epoch {epoch})" if epoch is not None else ""
    return ConfigError([f"train.cache_features: 'on', but the frozen prefix cannot be cached{at}: {reason}"])


def compute_of(cfg: Config, device: torch.device) -> Compute:
    """How the run's training step runs the network (precision, memory format) on ``device``."""
    return Compute(device, cfg.train.precision, cfg.train.channels_last)


def cache_pays(epochs_left: int, batches_per_epoch: int, batches_to_build: int) -> bool:
    """Whether building a cache pays for itself: a build runs its prefix once over every
    batch of the training and validation sets; without it, each of the ``epochs_left``
    epochs (the current one included) runs the same prefix over the batches it trains and
    validates on. The per-batch cost is the same on both sides, so it cancels: the build
    pays when the epochs left do strictly more batches than the build (at a tie the build
    would also copy every output into storage for nothing)."""
    return epochs_left * batches_per_epoch > batches_to_build


def cache_skip_reason(epochs_left: int) -> str:
    """Why a build that :func:`cache_pays` turns down is not made (train's record, plan's preview)."""
    return (
        f"not built: {epochs_left} epoch(s) left would run the prefix over no more batches than a build "
        "does, so it would not pay for itself"
    )


def _prefix_seconds(
    prefix: nn.Module, x: torch.Tensor, model: nn.Module, compute: Compute, repeats: int = 3
) -> tuple[torch.Tensor, float]:
    """``prefix``'s output for ``x`` and the median seconds of ``repeats`` timed forwards after a
    warm-up (allocator, kernel choice), run as a cache build runs it: eval mode, no autograd, the
    step's autocast. The median: one slow moment of the machine does not decide it."""
    times = []
    with torch.inference_mode(), eval_mode(model), compute.autocast():
        out = prefix(x)
        for _ in range(repeats):
            start = device_clock(compute.device)
            prefix(x)
            times.append(device_clock(compute.device) - start)
    return out, statistics.median(times)


def cache_batches(cfg: Config, n_train: int, n_val: int) -> tuple[int, int]:
    """(batches an epoch runs through the prefix, batches a cache build runs): an epoch trains on
    ``train.max_steps_per_epoch`` optimizer steps of ``train.accumulate`` batches at most, and
    validates on every validation batch; a build covers both sets whole."""
    batch = cfg.data.batch_size
    train_batches, val_batches = -(-n_train // batch), -(-n_val // batch)
    limit = cfg.train.max_steps_per_epoch
    trained = train_batches if limit is None else min(train_batches, limit * cfg.train.accumulate)
    return trained + val_batches, train_batches + val_batches


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
        self._cached: tuple[Split, FeatureCache] | None = None  # the cache `net` trains on, if any

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

    def follow(self, plan: FreezePlan, epochs_left: int | None = None) -> None:
        """Make what trains fit ``plan`` (already applied to the model), compiled with
        ``train.compile``; nothing to do when it already does. ``epochs_left`` (the current
        one included) lets ``cache_features: auto`` skip a cache that would not pay."""
        if self._made_for is plan:
            return
        self._made_for = plan
        self._build(epochs_left)
        if self.cfg.train.compile:
            self._compile(plan)

    def _build(self, epochs_left: int | None = None) -> None:
        previous, self._cached = self._cached, None
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
        if previous is not None and previous[0].frontier == split.frontier and self._still_frozen(previous[0]):
            self._train_on(split, previous[1])  # the trainable set changed after the frontier only
            return
        with self._rng_untouched():
            extend = self._extension(previous, split)
            if self.cfg.train.cache_features == "auto" and epochs_left is not None:
                if not self._pays(split, previous if extend else None, extend, epochs_left):
                    if previous is not None and self._still_frozen(previous[0]):
                        self._train_on(*previous)  # the earlier cache still holds a frozen prefix's output
                    return
            self._use_cache(split, previous[1] if extend else None, extend)

    @staticmethod
    def _still_frozen(split: Split) -> bool:
        """Whether ``split``'s prefix is still all frozen and pinned, so its cached output still holds."""
        modules = split.prefix.modules()
        return not any(p.requires_grad for p in split.prefix.parameters()) and not any(
            m.training for m in modules if isinstance(m, nn.modules.batchnorm._BatchNorm)
        )

    def _extension(self, previous: tuple[Split, FeatureCache] | None, split: Split) -> Split | None:
        """When the frozen prefix only grew since ``previous`` was built, the part between its
        frontier and the new one (a split of its suffix), checked to give on cached features what
        ``split``'s prefix gives on images; None when the cache must be rebuilt from the images (it
        was spilled to a file the new one would overwrite, or the prefix changed otherwise)."""
        if previous is None or previous[1].storage != "memory":
            return None
        old, _ = previous
        if not self._still_frozen(old):
            return None  # something in the old prefix trains again (gradual unfreezing)
        try:
            middle = split_model(old.suffix)
        except CacheRefused:
            return None
        x, _ = next(iter(self.loaders.val))
        x = self.compute.input(x)
        with torch.inference_mode(), eval_mode(self.model), self.compute.autocast():
            direct, via = split.prefix(x), middle.prefix(self.compute.input(old.prefix(x).to("cpu")))
        return middle if direct.shape == via.shape and torch.equal(direct.cpu(), via.cpu()) else None

    def _pays(
        self, split: Split, previous: tuple[Split, FeatureCache] | None, extend: Split | None, epochs_left: int
    ) -> bool:
        """``cache_features: auto``: build (or extend) the cache at ``split``'s frontier only if the
        epochs left would run its prefix over more batches than the build does (:func:`cache_pays`);
        the decision, with the build's predicted seconds, goes to the log and to summary.json."""
        batch = self.cfg.data.batch_size
        per_epoch, to_build = cache_batches(self.cfg, len(self.loaders.train.dataset), len(self.loaders.val.dataset))
        pays = cache_pays(epochs_left, per_epoch, to_build)
        # The prefix's seconds per batch, timed once, make the decision readable in the log.
        prefix = extend.prefix if extend is not None else split.prefix
        source = previous[1].val if previous is not None and extend is not None else self.loaders.val.dataset
        x = self.compute.input(torch.stack([source[i][0] for i in range(min(batch, len(source)))]))
        _, batch_s = _prefix_seconds(prefix, x, self.model, self.compute)
        decision = {
            "frontier": split.frontier,
            "from": f"the cached '{previous[0].frontier}'" if extend is not None else "the images",
            "epochs_left": epochs_left,
            "build_batches": to_build,
            "batches_per_epoch": per_epoch,
            "predicted_build_s": batch_s * to_build,
            "predicted_saving_s": batch_s * (per_epoch * epochs_left - to_build),
            "built": pays,
        }
        self.cache_info.setdefault("decisions", []).append(decision)
        log.info(
            "%s: feature cache at '%s' from %s: %s (a build is ~%.2fs; %d epoch%s left would run the prefix over "
            "%d batches, the build over %d)",
            self.cfg.name,
            split.frontier,
            decision["from"],
            "built" if pays else "skipped, it would not pay for itself",
            decision["predicted_build_s"],
            epochs_left,
            "" if epochs_left == 1 else "s",
            epochs_left * per_epoch,
            to_build,
        )
        if not pays and not self.cache_info["used"]:
            self.cache_info["reason"] = f"at '{split.frontier}': {cache_skip_reason(epochs_left)}"
        return pays

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

    def _use_cache(self, split: Split, previous: FeatureCache | None = None, extend: Split | None = None) -> None:
        """Build the cache at ``split``'s frontier, from the images or, given ``extend``, by running
        only the newly frozen part over ``previous``'s features; then train on it."""
        cache = build_cache(
            self.model,
            extend or split,
            previous.train if extend is not None else self.loaders.train.dataset,
            previous.val if extend is not None else self.loaders.val.dataset,
            self.cfg.data.batch_size,
            self.compute,
            self.cfg.train.cache_max_bytes,
            self.folder,
        )
        built = {"frontier": split.frontier, "extended": extend is not None, **cache.to_json()}
        builds = self.cache_info.get("builds", []) + [built]
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
            "%s: cached the frozen prefix's output (%s, %.1f MiB of %s, %s) in %.1fs%s",
            self.cfg.name,
            split.frontier,
            cache.bytes / 2**20,
            cache.to_json()["dtype"],
            cache.storage,
            cache.build_s,
            ", extended from the cached features" if extend is not None else "",
        )
        self._train_on(split, cache)

    def _train_on(self, split: Split, cache: FeatureCache) -> None:
        # The suffix is made of the model's own modules: training it trains the model.
        self._cached = (split, cache)
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
    # A whole batch where it is cheap: at 32 px four images spend their time in per-operation
    # overhead, and scaled up predicted builds 10-30x too long. At 224 px (a ViT's batch would take
    # plan seconds) a few images, whose time is already the convolutions'.
    size = cfg.data.image_size
    n = min(cfg.data.batch_size, max(4, 64 * 64 * 64 // (size * size)))
    compute = compute_of(cfg, device)
    x = compute.input(torch.randn(n, 3, size, size))
    features, batch_s = _prefix_seconds(split.prefix, x, model, compute)
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
