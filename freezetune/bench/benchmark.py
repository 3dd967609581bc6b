"""The framework's training step against a minimal hand-written PyTorch loop.

Both get the same architecture and initial weights, the same freezing (by
``requires_grad``, with the same modules in eval: the plan's frozen BatchNorm and, under
``freeze.frozen_modules: eval``, every frozen module), the same optimizer
and the same batch, already in memory, and run in the config's precision and
memory format (``train.precision``, ``train.channels_last``): the hand-written loop
as a practitioner writes it, with ``torch.autocast``, the loss in fp32, the model and
its inputs in channels-last, a GradScaler for fp16. The step is a plain one on both
sides (no accumulation, clipping or label smoothing, no ``train.compile``).

Several configs of one preset and image size (one per precision and memory format)
are timed together: each round runs every config's two loops, the order reversed
every other round, so that drift in the machine's speed (turbo, other load) lands on
all of them alike; each ratio is the median of its per-round ratios.

The modes matter beyond BatchNorm. A frozen ``nn.MultiheadAttention`` in eval, with nothing
needing its gradient, runs PyTorch's fused inference kernel (``torch._native_multi_head_attention``;
CPU autocast does not turn it off). In train mode it takes the general path, whose input
projection on a batch-first input with no gradient to keep goes through a weight broadcast to
every sequence position and a bmm (pytorch/pytorch#126973): on CPU a vit_b_16 block's forward
1.8x slower in fp32 and 18x in bf16, the whole step 20x. A hand loop that left the frozen blocks
in train mode would time that, not freezetune's overhead."""

from __future__ import annotations

import copy
import dataclasses
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from freezetune.config import Config, load_config
from freezetune.measure import device_clock
from freezetune.plan import describe, unpin_eval
from freezetune.record import read_jsonl
from freezetune.train import (
    LoopOptions,
    finished,
    make_optimizer,
    num_outputs,
    prepare,
    prepare_model,
    run,
    train_one_epoch,
)

__all__ = [
    "BenchPair",
    "BenchResult",
    "CacheBenchResult",
    "SignalCost",
    "bench_pair",
    "benchmark_auto_signal",
    "benchmark_cache",
    "benchmark_config",
    "benchmark_configs",
    "hand_written_loop",
    "memory_format_name",
]


def memory_format_name(channels_last: bool) -> str:
    """``train.channels_last`` as the table shows it."""
    return "channels_last" if channels_last else "contiguous"


@dataclass
class BenchResult:
    """One preset at one image size, in one precision and memory format: both loops'
    median step and the median ratios."""

    name: str
    image_size: int
    device: str
    framework_ms: float  # median per step
    hand_ms: float
    ratio: float  # median over rounds of framework / hand-written
    precision: str = "fp32"
    memory_format: str = "contiguous"
    # Median over rounds of this framework step / the framework's fp32 step of the same preset
    # and size timed in the same rounds (contiguous if that was timed, else the same format); None without one.
    vs_fp32: float | None = None
    held_in_eval: int = 0  # modules both loops train with in eval (the plan's pins)
    fast_attention: int = 0  # of those, nn.MultiheadAttention (PyTorch's fused inference path)

    def to_json(self) -> dict:
        """As runs/benchmark.json stores it."""
        return self.__dict__.copy()


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def hand_written_loop(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    held_in_eval: list[nn.Module],
    precision: str = "fp32",
    channels_last: bool = False,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """What a practitioner writes by hand: the baseline. ``precision`` is ``fp32``,
    ``bf16`` or ``fp16`` (pass a GradScaler with fp16); with ``channels_last`` the model
    is expected in that format already, and each input batch is converted. ``held_in_eval``
    are the modules that freezetune's plan keeps in eval (its frozen BatchNorm and frozen modules),
    as a practitioner following the plan sets them."""
    model.train()
    for m in held_in_eval:
        m.training = False  # this module only: eval() would also take along a child that the plan leaves training
    dtype = _AUTOCAST_DTYPES.get(precision)
    for x, y in batches:
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()


def _hand_model(reference: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """A copy of the framework's model (same weights, same requires_grad flags, same
    memory format) stripped of freezetune's pins, and the modules that the pins hold in eval
    through ``train()``: the hand loop puts those in eval itself."""
    model = copy.deepcopy(reference).train()  # the pinned modules stay in eval
    held = [m for m in model.modules() if not m.training]
    for m in model.modules():
        unpin_eval(m)
    return model, held


@dataclass
class BenchPair:
    """One config's two loops, each over the same ``steps`` batches, ready to time."""

    cfg: Config  # its preprocessing resolved
    device: torch.device
    framework_model: nn.Module
    hand_model: nn.Module  # a copy of the framework's model before either trained
    framework: Callable[[], None]  # freezetune's train_one_epoch
    hand: Callable[[], None]  # hand_written_loop
    held_in_eval: list[nn.Module] = dataclasses.field(default_factory=list)  # the hand model's, as the plan pins


def bench_pair(cfg: Config, steps: int) -> BenchPair:
    """Build ``cfg``'s model twice over (the same weights, flags and BatchNorm modes), an
    optimizer (and for fp16 a GradScaler) for each, one random batch, and the two loops."""
    prepared = prepare_model(cfg)  # in cfg's memory format
    cfg, device, t = prepared.cfg, prepared.device, prepared.cfg.train  # its preprocessing resolved
    fw_model = prepared.model
    hand_model, held = _hand_model(fw_model)
    fw_opt = make_optimizer(fw_model, cfg.train.optimizer)
    hand_opt = make_optimizer(hand_model, cfg.train.optimizer)
    fp16 = t.precision == "fp16"
    fw_scaler = torch.amp.GradScaler(device.type) if fp16 else None
    hand_scaler = torch.amp.GradScaler(device.type) if fp16 else None
    # The same batch for every config, in the default memory format: both loops convert it, as they
    # would a loader's batch.
    g = torch.Generator().manual_seed(cfg.seed)
    n, s = cfg.data.batch_size, cfg.data.image_size
    x = torch.randn(n, 3, s, s, generator=g).to(device)
    y = torch.randint(0, num_outputs(cfg), (n,), generator=g).to(device)
    batches = [(x, y)] * steps
    options = LoopOptions(precision=t.precision, channels_last=t.channels_last, scaler=fw_scaler)

    def framework() -> None:
        train_one_epoch(fw_model, fw_opt, batches, device, options)  # type: ignore[arg-type]

    def hand() -> None:
        hand_written_loop(hand_model, hand_opt, batches, held, t.precision, t.channels_last, hand_scaler)

    return BenchPair(cfg, device, fw_model, hand_model, framework, hand, held)


def _reference(pairs: list[BenchPair], i: int) -> int | None:
    """Which pair's framework step config ``i`` is compared with for ``vs_fp32``."""
    fp32 = [j for j, p in enumerate(pairs) if p.cfg.train.precision == "fp32"]
    contiguous = [j for j in fp32 if not pairs[j].cfg.train.channels_last]
    same = [j for j in fp32 if pairs[j].cfg.train.channels_last == pairs[i].cfg.train.channels_last]
    return (contiguous or same or [None])[0]


def benchmark_configs(cfgs: list[Config], steps: int = 10, rounds: int = 7) -> list[BenchResult]:
    """freezetune's step against :func:`hand_written_loop` for each config (typically one
    preset and image size in several precisions and memory formats), all timed in the
    same ``rounds`` interleaved rounds of ``steps`` steps each."""
    pairs = [bench_pair(cfg, steps) for cfg in cfgs]

    def timed(pair: BenchPair, fn: Callable[[], None]) -> float:
        t0 = device_clock(pair.device)
        fn()
        return device_clock(pair.device) - t0

    calls = [(i, side) for i in range(len(pairs)) for side in ("framework", "hand")]
    for i, side in calls:  # warm-up: allocator, kernel choice, optimizer state, the scaler's scale
        timed(pairs[i], getattr(pairs[i], side))
    times: dict[tuple[int, str], list[float]] = {c: [] for c in calls}
    for r in range(rounds):
        for i, side in calls if r % 2 == 0 else reversed(calls):
            times[i, side].append(timed(pairs[i], getattr(pairs[i], side)))
    results = []
    for i, pair in enumerate(pairs):
        fw, hand = times[i, "framework"], times[i, "hand"]
        ref = _reference(pairs, i)
        vs_fp32 = None
        if ref is not None:
            vs_fp32 = statistics.median(a / b for a, b in zip(fw, times[ref, "framework"], strict=True))
        t = pair.cfg.train
        results.append(
            BenchResult(
                pair.cfg.name,
                pair.cfg.data.image_size,
                str(pair.device),
                1000 * statistics.median(fw) / steps,
                1000 * statistics.median(hand) / steps,
                statistics.median(a / b for a, b in zip(fw, hand, strict=True)),
                t.precision,
                memory_format_name(t.channels_last),
                vs_fp32,
                len(pair.held_in_eval),
                sum(isinstance(m, nn.MultiheadAttention) for m in pair.held_in_eval),
            )
        )
    return results


def benchmark_config(cfg: Config, steps: int = 10, rounds: int = 7) -> BenchResult:
    """freezetune's step against :func:`hand_written_loop` on one batch, ``rounds`` interleaved rounds."""
    return benchmark_configs([cfg], steps, rounds)[0]


@dataclass
class CacheBenchResult:
    """Epoch times with the feature cache, without it, and by hand, for one config."""

    name: str
    build_s: float  # the one pass of the frozen prefix over train and val
    cached_epoch_s: float  # mean training epoch after the first, cached
    uncached_epoch_s: float  # the same without the cache
    hand_epoch_s: float  # one epoch of the hand-written loop over the same loader, uncached
    cached_val_acc: float
    uncached_val_acc: float

    @property
    def speedup(self) -> float:
        """Uncached over cached epoch time."""
        return self.uncached_epoch_s / self.cached_epoch_s

    @property
    def speedup_vs_hand(self) -> float:
        """Hand-written over cached epoch time."""
        return self.hand_epoch_s / self.cached_epoch_s

    def to_json(self) -> dict:
        """As runs/benchmark_cache.json stores it."""
        return self.__dict__ | {"speedup": self.speedup, "speedup_vs_hand": self.speedup_vs_hand}


def _later_epochs(run_dir: str) -> float:
    rows = read_jsonl(Path(run_dir) / "metrics.jsonl")
    later = [r["epoch_time_s"] for r in rows[1:]] or [rows[0]["epoch_time_s"]]
    return sum(later) / len(later)


def benchmark_cache(config: str, overrides: list[str], epochs: int, folder: Path) -> CacheBenchResult:
    """Epoch time after the first with the feature cache, without it, and by hand."""
    summaries = {}
    for mode in ("on", "off"):
        edits = [
            *overrides,
            f"train.cache_features={mode}",
            f"train.epochs={epochs}",
            f"train.output_dir={folder / mode}",
        ]
        summaries[mode] = finished(run(load_config(config, edits), overwrite=True))
    cfg = load_config(config, overrides)
    prepared, loaders = prepare(cfg)
    hand_model, held = _hand_model(prepared.model)
    optimizer = make_optimizer(hand_model, cfg.train.optimizer)
    device, t = prepared.device, cfg.train
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None

    def epoch() -> None:
        batches = ((x.to(device), y.to(device)) for x, y in loaders.train)
        hand_written_loop(hand_model, optimizer, batches, held, t.precision, t.channels_last, scaler)

    t0 = device_clock(device)
    epoch()
    hand_s = device_clock(device) - t0
    return CacheBenchResult(
        cfg.name,
        summaries["on"].cache["build_s"],
        _later_epochs(summaries["on"].run_dir),
        _later_epochs(summaries["off"].run_dir),
        hand_s,
        summaries["on"].final_val_acc,
        summaries["off"].final_val_acc,
    )


@dataclass
class SignalCost:
    """What freeze.preset auto's gradient-norm sample costs next to a training step."""

    name: str
    step_ms: float  # median step (forward, backward, optimizer) without sampling
    sample_ms: float  # median of one sample (every stage's gradient norm)
    sample_every: int

    @property
    def per_step(self) -> float:
        """The sample's share of a step at ``sample_every``."""
        return self.sample_ms / self.step_ms / self.sample_every

    def to_json(self) -> dict[str, float | int | str]:
        """As the benchmark's JSON holds it."""
        return {**dataclasses.asdict(self), "share_per_step": self.per_step}


def benchmark_auto_signal(cfg: Config, rounds: int = 41) -> SignalCost:
    """Steps of ``cfg``'s model on one batch of its shape, each followed (or not) by an auto
    sample, alternated so that the machine's drift hits both alike; the medians."""
    from freezetune.train.auto import AutoFreezer

    prepared = prepare_model(cfg)
    cfg, model, device = prepared.cfg, prepared.model, prepared.device
    n, size = cfg.data.batch_size, cfg.data.image_size
    x = torch.randn(n, 3, size, size, device=device)
    y = torch.randint(0, prepared.num_classes, (n,), device=device)
    optimizer = make_optimizer(model, cfg.train.optimizer)
    tree = describe(model)
    auto = AutoFreezer(model, tree, cfg.freeze.auto, cfg.train.epochs, device)
    steps, samples = [], []
    for i in range(rounds + 3):
        start = device_clock(device)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        step = device_clock(device) - start
        start = device_clock(device)
        auto.sample(0)
        sample = device_clock(device) - start
        if i >= 3:  # warm-up steps left out
            steps.append(step)
            samples.append(sample)
    return SignalCost(
        cfg.name, 1000 * statistics.median(steps), 1000 * statistics.median(samples), cfg.freeze.auto.sample_every
    )
