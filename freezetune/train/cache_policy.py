"""Whether a phase trains on a frozen-prefix feature cache, and why: built from the images,
extended from the features already cached, kept, skipped because it would not pay for
itself, or not used at all.

One :class:`CachePolicy` decides it, for the trainer at each phase's start
(freezetune.train.nets) and for ``freezetune plan``'s preview of every phase
(:func:`preview_cache`), so that the plan never says what training does not do. The
decision is a :class:`CacheDecision`; building the cache it asks for is
freezetune.train.cache's job, following it across phases freezetune.train.nets's."""

from __future__ import annotations

import enum
import math
import statistics
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
from torch.utils.data import Dataset, default_collate

from freezetune.config import Config, ConfigError
from freezetune.measure import device_clock
from freezetune.plan import Schedule, apply_plan
from freezetune.train.cache import (
    CacheRefused,
    CheckedSplit,
    Compute,
    Split,
    check_and_time_split,
    prefix_problem,
    split_model,
)
from freezetune.utils import eval_mode

__all__ = [
    "CacheAction",
    "CacheDecision",
    "CachePolicy",
    "HeldCache",
    "Weighing",
    "cache_batches",
    "cache_on_refused",
    "cache_pays",
    "cache_skip_reason",
    "compute_of",
    "first_batch",
    "preview_cache",
    "prefix_still_frozen",
    "probe_images",
]

# plan's preview times the prefix this many times (the check's forward and two more) and takes the
# median: plan's seconds are not training's, and one slow moment of a shared machine must not
# decide its prediction. Training times only the check's own forward, so its set-up stays one pass.
PREVIEW_REPEATS = 3

DDP_REASON = "off under DDP (multi-process): the cache would bypass DDP's gradient all-reduce"
OFF_REASON = "train.cache_features: off"


def cache_on_refused(reason: str, epoch: int | None = None) -> ConfigError:
    """The config error for ``train.cache_features: on`` when the cache cannot be used
    (``epoch``: the phase it fails in, for a schedule)."""
    at = f" (from epoch {epoch})" if epoch is not None else ""
    return ConfigError([f"train.cache_features: 'on', but the frozen prefix cannot be cached{at}: {reason}"])


def compute_of(cfg: Config, device: torch.device) -> Compute:
    """How the run's training step runs the network (precision, memory format) on ``device``."""
    return Compute(device, cfg.train.precision, cfg.train.channels_last)


def cache_pays(epochs_left: int, batches_per_epoch: int, batches_to_build: int, setup_batches: float = 0.0) -> bool:
    """Whether building a cache pays for everything it spends: a build runs its prefix once over
    every batch of the training and validation sets; without it, each of the ``epochs_left``
    epochs (the current one included) runs the same prefix over the batches it trains and
    validates on. The per-batch cost is the same on both sides, so it is the unit:
    ``setup_batches`` is the set-up (tracing, checking the cut, timing) in prefix batches. The
    build pays when the epochs left do strictly more batches than the build and the set-up
    together (at a tie the build would also copy every output into storage for nothing)."""
    return epochs_left * batches_per_epoch > batches_to_build + setup_batches


def _no_build_pays(epochs_left: int) -> str:
    """Why no build can pay, whatever it costs: the epochs left run the prefix over no more batches than it."""
    return (
        f"not built: {epochs_left} epoch(s) left would run the prefix over no more batches than a build "
        "does, so it would not pay for itself"
    )


def cache_skip_reason(w: Weighing) -> str:
    """Why a build that :func:`cache_pays` turns down is not made (train's record, plan's preview)."""
    if not cache_pays(w.epochs_left, w.batches_per_epoch, w.build_batches):
        return _no_build_pays(w.epochs_left)
    return (
        f"not built: {w.epochs_left} epoch(s) left would save ~{w.prefix_s - w.build_s:.2f}s of prefix work "
        f"{'and reading images ' if w.load_s > 0 else ''}over "
        f"a ~{w.build_s:.2f}s build, no more than its ~{w.setup_s:.2f}s set-up (tracing, checking the cut, timing), "
        "so it would not pay for itself"
    )


def first_batch(ds: Dataset, batch_size: int) -> tuple[torch.Tensor, float]:
    """The first ``batch_size`` images of ``ds`` (the validation set: training's first validation
    batch, unshuffled), read as a build reads every batch (in this process, no workers), and the
    seconds reading a batch takes: what a build, and an uncached epoch, wait for per batch before
    the prefix runs: the median image's seconds, times the batch size. The first image is read
    untimed, as it pays one-time costs (lazy imports, the first decode), and the median leaves
    out a pause that is not the reading's: one image of resnet18's FakeData batch at 224 px
    took 269 ms against 2-4 ms for the others (the collector or another thread), and a sum
    predicted 2.0 s of reading for a build that read for 0.3 s."""
    n = min(batch_size, len(ds))  # type: ignore[arg-type]
    items, times = [ds[0]], []
    for i in range(1, n):
        start = time.perf_counter()
        items.append(ds[i])
        times.append(time.perf_counter() - start)
    per_image = statistics.median(times) if times else 0.0
    return default_collate(items)[0], per_image * batch_size


def probe_images(batch_size: int, image_size: int) -> int:
    """How many images the cut is checked and the prefix timed on (plan's random ones and
    training's first validation batch alike): a whole batch where it is cheap, since at 32 px
    four images spend their time in per-operation overhead and, scaled up, predicted builds
    10-30x too long; at 224 px a few, whose time is already the convolutions' (a whole ViT
    batch would take seconds of set-up, every one of them spent before the cache can pay)."""
    return min(batch_size, max(4, 64 * 64 * 64 // (image_size * image_size)))


def cache_batches(cfg: Config, n_train: int, n_val: int) -> tuple[int, int]:
    """(batches an epoch runs through the prefix, batches a cache build runs): an epoch trains on
    ``train.max_steps_per_epoch`` optimizer steps of ``train.accumulate`` batches at most, and
    validates on every validation batch; a build covers both sets whole."""
    batch = cfg.data.batch_size
    train_batches, val_batches = -(-n_train // batch), -(-n_val // batch)
    limit = cfg.train.max_steps_per_epoch
    trained = train_batches if limit is None else min(train_batches, limit * cfg.train.accumulate)
    return trained + val_batches, train_batches + val_batches


def prefix_still_frozen(split: Split) -> bool:
    """Whether ``split``'s prefix is still all frozen and pinned, so its cached output still holds."""
    return not any(p.requires_grad for p in split.prefix.parameters()) and not any(
        m.training for m in split.prefix.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )


class CacheAction(enum.Enum):
    """What a phase trains on, as far as the feature cache goes."""

    BUILD = "build"  # a new cache at the phase's frontier, its prefix run over the images
    EXTEND = "extend"  # a new cache: only the newly frozen part run over the features already cached
    KEEP = "keep"  # the cache already built stays in use
    SKIP = "skip"  # no cache: a new one would not pay for itself (cache_features: auto)
    REFUSED = "refused"  # no cache: the frozen prefix cannot be cached
    OFF = "off"  # no cache: cache_features: off, or DDP


@dataclass(frozen=True)
class HeldCache:
    """A cache in use when the plan changes: where it was cut, and whether it is in memory
    (a cache spilled to a file is never extended: the new one would overwrite the file)."""

    split: Split
    in_memory: bool


@dataclass(frozen=True)
class Weighing:
    """``cache_features: auto``'s comparison for a new cache: prefix batches the epochs left
    would run against the batches a build runs, the prefix's timed seconds per batch, the
    seconds reading a batch of images takes (``load_s``: a build reads every image once, and so
    does every uncached epoch, while a cached epoch reads none; 0 when the loader's workers read
    ahead, or for an extension, which starts from features already in memory), and the seconds
    the decision spent setting the cache up (tracing, checking the cut, timing)."""

    epochs_left: int
    batches_per_epoch: int
    build_batches: int
    batch_s: float
    setup_s: float = 0.0
    load_s: float = 0.0

    @property
    def unit_s(self) -> float:
        """One batch read and run through the prefix: the same on both sides of the comparison."""
        return self.batch_s + self.load_s

    @property
    def setup_batches(self) -> float:
        """The set-up in batches, the unit :func:`cache_pays` weighs in."""
        if self.setup_s <= 0:
            return 0.0
        return self.setup_s / self.unit_s if self.unit_s > 0 else math.inf

    @property
    def pays(self) -> bool:
        """Whether the build pays for itself and its set-up (:func:`cache_pays`)."""
        return cache_pays(self.epochs_left, self.batches_per_epoch, self.build_batches, self.setup_batches)

    @property
    def prefix_s(self) -> float:
        """The seconds the epochs left would spend without a cache reading images and running the prefix."""
        return self.unit_s * self.batches_per_epoch * self.epochs_left

    @property
    def build_s(self) -> float:
        """The build's predicted seconds, the reading of the images included."""
        return self.unit_s * self.build_batches

    @property
    def predicted_saving_s(self) -> float:
        """What the cache saves over the epochs left, its build and set-up paid (negative: it costs)."""
        return self.prefix_s - self.build_s - self.setup_s


@dataclass(frozen=True)
class CacheDecision:
    """What :meth:`CachePolicy.decide` answers for a phase.

    ``reason`` says why no new cache is made (OFF, REFUSED, SKIP, and KEEP in place of a build
    that would not pay); ``split`` is the phase's cut (None for OFF and REFUSED); ``held`` the
    cache kept or extended; ``extension`` the newly frozen part an extension runs (set whenever
    the cache could be extended, also when it is then skipped). For a new cache (BUILD, EXTEND,
    SKIP, and KEEP instead of one) ``feature_shape`` and ``feature_dtype`` describe one image's
    prefix output, ``batch_s`` is the prefix's timed seconds per batch, ``load_s`` the seconds
    reading a batch takes where they are counted (:class:`Weighing`), ``build_s`` the build's
    predicted seconds (both together), ``bytes`` and ``storage`` its size for every image and where it would be
    kept; ``weighed`` is auto's comparison when it was made. ``setup_s``: the seconds the
    decision itself spent (tracing, checking the cut, timing; plan's extra timing passes left out).
    """

    action: CacheAction
    reason: str | None = None
    split: Split | None = field(default=None, repr=False)
    held: HeldCache | None = field(default=None, repr=False)
    extension: Split | None = field(default=None, repr=False)
    check_max_abs_diff: float | None = None
    feature_shape: tuple[int, ...] | None = None
    feature_dtype: torch.dtype | None = None
    batch_s: float | None = None
    load_s: float = 0.0
    build_s: float | None = None
    bytes: int | None = None
    storage: str | None = None
    weighed: Weighing | None = None
    setup_s: float | None = None

    @property
    def reading_s(self) -> float:
        """Of ``build_s``, the predicted seconds reading the images (0 where reading is not counted)."""
        if self.load_s <= 0 or self.build_s is None or self.batch_s is None:
            return 0.0
        return self.build_s * self.load_s / (self.batch_s + self.load_s)

    @property
    def used(self) -> bool:
        """Whether the phase trains on a cache."""
        return self.action in (CacheAction.BUILD, CacheAction.EXTEND, CacheAction.KEEP)

    @property
    def builds(self) -> bool:
        """Whether a new cache is made at the phase's frontier."""
        return self.action in (CacheAction.BUILD, CacheAction.EXTEND)

    @property
    def source(self) -> str:
        """Where a new cache's prefix starts: the images, or the cached features it extends."""
        if self.extension is not None and self.held is not None:
            return f"the cached '{self.held.split.frontier}'"
        return "the images"

    def to_json(self) -> dict:
        """``summary.json``'s ``cache.decisions`` row for a weighed decision."""
        assert self.weighed is not None and self.split is not None and self.build_s is not None
        w = self.weighed
        return {
            "frontier": self.split.frontier,
            "from": self.source,
            "epochs_left": w.epochs_left,
            "build_batches": w.build_batches,
            "batches_per_epoch": w.batches_per_epoch,
            "predicted_build_s": self.build_s,
            "predicted_saving_s": w.predicted_saving_s,
            "built": w.pays,
            "batch_s": w.batch_s,
            "load_s": w.load_s,
            "predicted_prefix_s": w.prefix_s,
            "setup_s": w.setup_s,
        }


@dataclass(frozen=True)
class CachePolicy:
    """The cache rules of one run: ``train.cache_features`` (``mode``), how a step computes
    (``compute``), the batch counts that decide whether a build pays, the memory budget, and
    whether the run is distributed (DDP: never cached); ``workers``: the loaders' worker
    processes (reading images is counted in the decision only without them). Made by :meth:`of`."""

    mode: str
    compute: Compute
    batch_size: int
    batches_per_epoch: int
    build_batches: int
    n_images: int
    max_bytes: int
    problem: str | None = None  # why the data rules the cache out (prefix_problem), if it does
    distributed: bool = False
    repeats: int = 1  # timed prefix forwards, the check's included (plan's preview: PREVIEW_REPEATS)
    workers: int = 0

    @classmethod
    def of(cls, cfg: Config, n_train: int, n_val: int, device: torch.device, distributed: bool = False) -> CachePolicy:
        """The policy for ``cfg`` on ``device``, for ``n_train`` training and ``n_val`` validation images."""
        per_epoch, to_build = cache_batches(cfg, n_train, n_val)
        return cls(
            cfg.train.cache_features,
            compute_of(cfg, device),
            cfg.data.batch_size,
            per_epoch,
            to_build,
            n_train + n_val,
            cfg.train.cache_max_bytes,
            prefix_problem(cfg.data.augment),
            distributed,
            workers=cfg.data.num_workers,
        )

    def unavailable(self) -> CacheDecision | None:
        """The decision for every phase when no cache can be used whatever the model (``off``,
        DDP), so no images are needed to make it; None when :meth:`decide` must look."""
        if self.distributed:  # DDP registers what trains; a suffix on cached features would bypass its all-reduce
            return CacheDecision(CacheAction.OFF, DDP_REASON if self.mode != "off" else None)
        if self.mode == "off":
            return CacheDecision(CacheAction.OFF, OFF_REASON)
        return None

    def split(self, model: nn.Module, x: torch.Tensor) -> tuple[Split, float]:
        """``model`` cut at its frozen prefix, checked on the images ``x`` to give what the model
        gives, and the largest difference; raises :class:`CacheRefused` with the reason."""
        split, checked = self._checked(model, self._probe(x))
        return split, checked.max_abs_diff

    def _probe(self, x: torch.Tensor) -> torch.Tensor:
        """The images of ``x`` the cut is checked and the prefix timed on (:func:`probe_images`)."""
        return x[: probe_images(self.batch_size, x.shape[-1])] if x.dim() == 4 else x

    def _checked(self, model: nn.Module, x: torch.Tensor) -> tuple[Split, CheckedSplit]:
        """One trace, one check of the cut, and the prefix's time from the check's own forward."""
        if self.problem:
            raise CacheRefused(self.problem)
        split = split_model(model)
        return split, check_and_time_split(model, split, x, self.compute, self.repeats)

    def decide(
        self,
        model: nn.Module,
        x: torch.Tensor,
        previous: HeldCache | None,
        epochs_left: int | None,
        epoch: int | None = None,
        read_s: float = 0.0,
    ) -> CacheDecision:
        """What the phase whose plan ``model`` has now trains on.

        Args:
            model: the model with the phase's plan applied.
            x: a batch of images as the loaders give them: the split is checked, the prefix
                (or the extension) timed, and an extension checked on it.
            previous: the cache in use until now, if any.
            epochs_left: the epochs from the phase's start to the run's end (None: not weighed).
            epoch: the phase's first epoch, for the error under ``on`` (None: not named).
            read_s: the seconds reading ``x``'s batch took (:func:`first_batch`; 0: not known),
                counted per batch on both sides when the loaders have no workers.

        Raises:
            ConfigError: under ``cache_features: on``, when the prefix cannot be cached.
        """
        off = self.unavailable() or self._never_pays(model, previous, epochs_left)
        if off is not None:
            return off
        start = device_clock(self.compute.device)
        x = self._probe(x)
        try:
            split, checked = self._checked(model, x)
        except CacheRefused as exc:
            if self.mode == "on":
                raise cache_on_refused(str(exc), epoch) from None
            return CacheDecision(CacheAction.REFUSED, str(exc))
        diff = checked.max_abs_diff
        if previous is not None and previous.split.frontier == split.frontier and prefix_still_frozen(previous.split):
            # The trainable set changed after the frontier only.
            setup_s = device_clock(self.compute.device) - start - sum(checked.prefix_s[1:])
            return CacheDecision(CacheAction.KEEP, split=split, held=previous, check_max_abs_diff=diff, setup_s=setup_s)
        extended = _extension(model, previous, split, x, self.compute, self.repeats)
        timed = checked.features, checked.prefix_s
        if extended is not None:
            extension, timed = extended[0], extended[1:]
        else:
            extension = None
        # An extension starts from features in memory, and the epochs without it read those too.
        load_s = read_s if extension is None and self.workers == 0 else 0.0
        new = self._new_cache(split, len(x), *timed, previous if extension is not None else None, extension, load_s)
        # Plan's extra timing passes are not a cost training pays: its set-up is what training's would be.
        extra = sum(checked.prefix_s[1:]) + (sum(extended[2][1:]) if extended is not None else 0.0)
        setup_s = device_clock(self.compute.device) - start - extra
        weighed = None
        if self.mode == "auto" and epochs_left is not None:
            weighed = Weighing(epochs_left, self.batches_per_epoch, self.build_batches, new.batch_s, setup_s, load_s)
        if weighed is None or weighed.pays:
            action = CacheAction.EXTEND if extension is not None else CacheAction.BUILD
            return replace(new, action=action, check_max_abs_diff=diff, weighed=weighed, setup_s=setup_s)
        # Not worth a build: the earlier cache, while its prefix is still frozen, still holds
        # that prefix's output (what was newly frozen then runs, frozen, in the suffix).
        keep = previous is not None and prefix_still_frozen(previous.split)
        return replace(
            new,
            action=CacheAction.KEEP if keep else CacheAction.SKIP,
            reason=cache_skip_reason(weighed),  # type: ignore[arg-type]
            held=previous if keep else new.held,
            check_max_abs_diff=diff,
            weighed=weighed,
            setup_s=setup_s,
        )

    def _never_pays(
        self, model: nn.Module, previous: HeldCache | None, epochs_left: int | None
    ) -> CacheDecision | None:
        """``auto`` with too few epochs left for any build to pay (one, at most sizes: a build runs
        the prefix over every batch an epoch runs it over): decided from the batch counts alone,
        before anything is traced, checked or timed, which would be set-up spent for nothing
        (seconds on a large model; a tenth of a tiny run). The earlier cache, while its prefix is
        still frozen, still holds that prefix's output and is kept; else nothing is cached.
        None (look, as before) when a reason that says more applies: a problem with the data
        (augmentation), or a first parameter that trains (most likely no frozen prefix at all,
        which the trace says)."""
        if self.mode != "auto" or epochs_left is None or self.problem:
            return None
        first = next(model.parameters(), None)
        if first is None or first.requires_grad:
            return None
        if cache_pays(epochs_left, self.batches_per_epoch, self.build_batches):
            return None
        reason = f"{_no_build_pays(epochs_left)} (decided from the batch counts, nothing traced)"
        if previous is not None and prefix_still_frozen(previous.split):
            return CacheDecision(CacheAction.KEEP, reason, split=previous.split, held=previous)
        return CacheDecision(CacheAction.SKIP, reason)

    def _new_cache(
        self,
        split: Split,
        n: int,
        features: torch.Tensor,
        times: list[float],
        extended: HeldCache | None,
        extension: Split | None,
        load_s: float = 0.0,
    ) -> CacheDecision:
        """A new cache at ``split`` (from ``extended``'s features through ``extension``, or from the
        images) predicted from its prefix's ``features`` for ``n`` images, the seconds ``times``
        of its timed forwards and ``load_s`` of reading a batch: one image's features, the
        build's seconds, its bytes and storage."""
        batch_s = statistics.median(times) * self.batch_size / n  # a whole batch's seconds (fewer images timed)
        total = (features[0].numel() * features.element_size() + 8) * self.n_images  # and the int64 labels
        return CacheDecision(
            CacheAction.BUILD,
            split=split,
            held=extended,
            extension=extension,
            feature_shape=tuple(features.shape[1:]),
            feature_dtype=features.dtype,
            batch_s=batch_s,
            load_s=load_s,
            build_s=(batch_s + load_s) * self.build_batches,
            bytes=total,
            storage="memory" if total <= self.max_bytes else "memmap",
        )

    def probe_batch(self, image_size: int) -> torch.Tensor:
        """Random images of ``image_size`` for :func:`preview_cache`, which reads no data: as many
        as training checks the cut on (:func:`probe_images`)."""
        return torch.randn(probe_images(self.batch_size, image_size), 3, image_size, image_size)


def _extension(
    model: nn.Module, previous: HeldCache | None, split: Split, x: torch.Tensor, compute: Compute, repeats: int = 1
) -> tuple[Split, torch.Tensor, list[float]] | None:
    """When the frozen prefix only grew since ``previous`` was built, the part between its
    frontier and the new one (a split of its suffix), checked to give on cached features what
    ``split``'s prefix gives on images, with its output and the seconds of its ``repeats`` timed
    forwards (warm: the whole new prefix ran the same layers first); None when the cache must be
    rebuilt from the images (it was spilled to a file the new one would overwrite, or the prefix
    changed otherwise)."""
    if previous is None or not previous.in_memory:
        return None
    old = previous.split
    if not prefix_still_frozen(old):
        return None  # something in the old prefix trains again (gradual unfreezing)
    try:
        middle = split_model(old.suffix)
    except CacheRefused:
        return None
    x = compute.input(x)
    times = []
    with torch.inference_mode(), eval_mode(model), compute.autocast():
        direct, cached = split.prefix(x), compute.input(old.prefix(x).to("cpu"))  # what the cache holds
        for _ in range(max(1, repeats)):
            start = device_clock(compute.device)
            via = middle.prefix(cached)
            times.append(device_clock(compute.device) - start)
    if direct.shape == via.shape and torch.equal(direct.cpu(), via.cpu()):
        return middle, via, times
    return None


def _preview_images(policy: CachePolicy, cfg: Config, val: Dataset | None) -> tuple[torch.Tensor, float]:
    """The images plan's preview decides on, and the seconds reading a batch of them takes."""
    if val is not None and policy.unavailable() is None and policy.problem is None:
        try:
            return first_batch(val, cfg.data.batch_size)
        except (OSError, SyntaxError, ValueError):
            # A file that cannot be read as an image (PIL raises these): training's image check
            # names it with the fix; plan still shows the plan, without the reading.
            pass
    return policy.probe_batch(cfg.data.image_size), 0.0


def preview_cache(
    cfg: Config,
    model: nn.Module,
    schedule: Schedule,
    device: torch.device,
    counts: tuple[int, int],
    val: Dataset | None = None,
) -> list[tuple[int, CacheDecision]]:
    """What training decides at each phase's start, from the same :meth:`CachePolicy.decide`:
    each phase's plan applied to ``model`` in turn, the first one again at the end. ``counts``:
    the training and validation images; ``val``: the validation set, whose first batch is read
    and timed as training reads it (:func:`first_batch`), when a decision will look at images;
    without it, or when that batch cannot be read, random images of the configured size and no
    reading counted. Returns (the phase's first epoch, the decision) per phase.

    Raises:
        ConfigError: under ``cache_features: on``, a phase whose prefix cannot be cached (as
            training refuses it).
    """
    policy = replace(CachePolicy.of(cfg, *counts, device), repeats=PREVIEW_REPEATS)
    x, read_s = _preview_images(policy, cfg, val)
    decisions, held = [], None
    try:
        for phase in schedule.phases:
            apply_plan(model, phase.plan)
            epochs_left = cfg.train.epochs - phase.start + 1
            d = policy.decide(model, x, held, epochs_left, phase.start if schedule.changes else None, read_s)
            if d.builds:
                held = HeldCache(d.split, d.storage == "memory")  # type: ignore[arg-type]
            elif not d.used:
                held = None
            decisions.append((phase.start, d))
    finally:
        apply_plan(model, schedule.initial)
    return decisions
