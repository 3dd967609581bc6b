"""The framework's training step against a minimal hand-written PyTorch loop.

Both get the same architecture and initial weights, the same freezing (by
``requires_grad``, with the same BatchNorm modules in eval), the same optimizer
and the same batch, already in memory. Rounds alternate A-B and B-A so that
drift in the machine's speed (turbo, other load) cancels; the result is the
median of the per-round time ratios."""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from freezetune.apply import unpin_eval
from freezetune.config import Config
from freezetune.data import num_classes_of
from freezetune.run import prepare_model
from freezetune.training import make_optimizer, train_one_epoch

__all__ = ["BenchResult", "benchmark_config", "hand_written_loop"]


@dataclass
class BenchResult:
    name: str
    image_size: int
    device: str
    framework_ms: float  # median per step
    hand_ms: float
    ratio: float  # median over rounds of framework / hand-written

    def to_json(self) -> dict:
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_config(cfg: Config, steps: int = 10, rounds: int = 7) -> BenchResult:
    prepared = prepare_model(cfg)
    device = prepared.device
    fw_model = prepared.model
    hand_model, frozen_bn = _hand_model(fw_model, set(prepared.plan.bn_eval))
    fw_opt = make_optimizer(fw_model, cfg.train.optimizer)
    hand_opt = make_optimizer(hand_model, cfg.train.optimizer)
    g = torch.Generator().manual_seed(cfg.seed)
    n, s = cfg.data.batch_size, cfg.data.image_size
    x = torch.randn(n, 3, s, s, generator=g).to(device)
    y = torch.randint(0, cfg.model.num_classes or num_classes_of(cfg.data), (n,), generator=g)
    batch = (x, y.to(device))
    batches = [batch] * steps

    def framework() -> None:
        train_one_epoch(fw_model, fw_opt, batches, device)  # type: ignore[arg-type]

    def hand() -> None:
        hand_written_loop(hand_model, hand_opt, batches, frozen_bn)

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

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
