"""The framework's training step against a minimal hand-written PyTorch loop.

Both get the same architecture and initial weights, the same freezing (by
``requires_grad``, with the same BatchNorm modules in eval), the same optimizer
and the same batch, already in memory. Rounds alternate A-B and B-A so that
drift in the machine's speed (turbo, other load) cancels; the result is the
median of the per-round time ratios."""

from __future__ import annotations

import copy
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from freezetune.config import Config, load_config
from freezetune.measure import device_clock
from freezetune.plan import unpin_eval
from freezetune.train import make_optimizer, num_outputs, prepare, prepare_model, run, train_one_epoch

__all__ = ["BenchResult", "CacheBenchResult", "benchmark_cache", "benchmark_config", "hand_written_loop"]


@dataclass
class BenchResult:
    """One preset at one image size: both loops' median step and the median ratio."""

    name: str
    image_size: int
    device: str
    framework_ms: float  # median per step
    hand_ms: float
    ratio: float  # median over rounds of framework / hand-written

    def to_json(self) -> dict:
        """As runs/benchmark.json stores it."""
        return self.__dict__.copy()


def hand_written_loop(
    model: nn.Module, optimizer: torch.optim.Optimizer, batches: list, frozen_bn: list[nn.Module]
) -> None:
    """What a practitioner writes by hand: the baseline."""
    model.train()
    for m in frozen_bn:
        m.eval()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()


def _hand_model(reference: nn.Module, bn_eval: set[str]) -> tuple[nn.Module, list[nn.Module]]:
    """A copy of the framework's model (same weights, same requires_grad flags)
    stripped of freezetune's BatchNorm pins: the hand loop calls .eval() itself."""
    model = copy.deepcopy(reference)
    for m in model.modules():
        unpin_eval(m)
    return model, [m for n, m in model.named_modules() if n in bn_eval]


def benchmark_config(cfg: Config, steps: int = 10, rounds: int = 7) -> BenchResult:
    """freezetune's step against :func:`hand_written_loop` on one batch, ``rounds`` interleaved rounds."""
    prepared = prepare_model(cfg)
    cfg = prepared.cfg  # its preprocessing resolved
    device = prepared.device
    fw_model = prepared.model
    hand_model, frozen_bn = _hand_model(fw_model, set(prepared.plan.bn_eval))
    fw_opt = make_optimizer(fw_model, cfg.train.optimizer)
    hand_opt = make_optimizer(hand_model, cfg.train.optimizer)
    g = torch.Generator().manual_seed(cfg.seed)
    n, s = cfg.data.batch_size, cfg.data.image_size
    x = torch.randn(n, 3, s, s, generator=g).to(device)
    y = torch.randint(0, num_outputs(cfg), (n,), generator=g)
    batch = (x, y.to(device))
    batches = [batch] * steps

    def framework() -> None:
        train_one_epoch(fw_model, fw_opt, batches, device)  # type: ignore[arg-type]

    def hand() -> None:
        hand_written_loop(hand_model, hand_opt, batches, frozen_bn)

    def timed(fn) -> float:
        t0 = device_clock(device)
        fn()
        return device_clock(device) - t0

    timed(framework), timed(hand)  # warm-up: allocator, kernel choice, optimizer state
    fw_times, hand_times, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            a, b = timed(framework), timed(hand)
        else:
            b, a = timed(hand), timed(framework)
        fw_times.append(a)
        hand_times.append(b)
        ratios.append(a / b)
    return BenchResult(
        cfg.name,
        s,
        str(device),
        1000 * statistics.median(fw_times) / steps,
        1000 * statistics.median(hand_times) / steps,
        statistics.median(ratios),
    )


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
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
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
        summaries[mode] = run(load_config(config, edits), overwrite=True)
    cfg = load_config(config, overrides)
    prepared, loaders = prepare(cfg)
    hand_model, frozen_bn = _hand_model(prepared.model, set(prepared.plan.bn_eval))
    optimizer = make_optimizer(hand_model, cfg.train.optimizer)
    device = prepared.device

    def epoch() -> None:
        batches = ((x.to(device), y.to(device)) for x, y in loaders.train)
        hand_written_loop(hand_model, optimizer, batches, frozen_bn)  # type: ignore[arg-type]

    t0 = device_clock(device)
    epoch()
    hand_s = device_clock(device) - t0
    return CacheBenchResult(
        cfg.name,
        summaries["on"]["cache"]["build_s"],
        _later_epochs(summaries["on"]["run_dir"]),
        _later_epochs(summaries["off"]["run_dir"]),
        hand_s,
        summaries["on"]["final_val_acc"],
        summaries["off"]["final_val_acc"],
    )
