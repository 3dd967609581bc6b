"""The training loop: backward through the trainable parameters only, evaluation
under ``inference_mode``. Read it top to bottom; nothing here knows about files."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from freezetune.apply import trainable_parameters
from freezetune.config import OptimizerConfig

__all__ = ["EpochResult", "Progress", "evaluate", "fit_epoch", "make_optimizer", "no_progress", "train_one_epoch"]

T = TypeVar("T")
# A progress wrapper (the scripts pass tqdm; the library stays silent).
Progress = Callable[[Iterable[T], str, int], Iterable[T]]


def no_progress(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
    return items


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_acc: float
    epoch_time_s: float
    samples_per_s: float
    steps: int


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """An optimizer over exactly the parameters that require grad.

    Frozen parameters never enter it, so neither momentum nor weight decay can
    move them (weight decay alone would, if they were in it with a zero grad)."""
    params = trainable_parameters(model)
    if not params:
        raise ValueError("no parameter requires grad: nothing to optimize")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    max_steps: int | None = None,
    progress: Progress = no_progress,
    desc: str = "train",
) -> tuple[float, int, int]:
    """One pass over ``loader``; returns (mean loss, samples seen, steps)."""
    model.train()  # frozen BatchNorm stays in eval: freezetune.apply pins it
    total_loss = torch.zeros((), device=device)
    seen = steps = 0
    n_batches = len(loader) if max_steps is None else min(len(loader), max_steps)
    for x, y in progress(loader, desc, n_batches):
        if steps == n_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # set_to_none: frozen parameters keep .grad None, trainable ones skip a memset.
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        # Accumulate a detached tensor: no graph is kept alive, and on CUDA no
        # per-step host sync (one .item() at the end).
        total_loss += loss.detach() * x.shape[0]
        seen += x.shape[0]
        steps += 1
    return (total_loss / max(seen, 1)).item(), seen, steps


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """(mean loss, accuracy) with no autograd state at all; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        n = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            total_loss += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
        return (total_loss / max(n, 1)).item(), (correct.float() / max(n, 1)).item()
    finally:
        model.train(was_training)


def fit_epoch(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    val_loader: DataLoader,
    device: torch.device,
    max_steps: int | None = None,
    progress: Progress = no_progress,
) -> EpochResult:
    """Train one epoch, then evaluate; the epoch time covers the training pass only."""
    start = time.perf_counter()
    train_loss, seen, steps = train_one_epoch(
        model, optimizer, train_loader, device, max_steps, progress, f"epoch {epoch}"
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    val_loss, val_acc = evaluate(model, val_loader, device)
    return EpochResult(epoch, train_loss, val_loss, val_acc, elapsed, seen / elapsed if elapsed else 0.0, steps)

