"""The training loop: backward through the trainable parameters only, evaluation
under ``inference_mode``. Read it top to bottom; nothing here knows about files.

A *step* is one optimizer step. With ``accumulate: N`` it is made of N micro-batches
(the last step of an epoch of fewer when the loader runs out), each micro-batch's loss
weighted by its share of the step's samples, so that N batches of B train as one batch
of N*B would (exactly so for a model without batch statistics: BatchNorm in train mode
normalises each micro-batch by its own mean and variance). Forward passes run under
autocast in ``precision``; the loss is computed in fp32; fp16 scales it (GradScaler)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Container, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from freezetune.measure.memory import SavedBytes, count_saved_tensors
from freezetune.measure.timing import StepClock, device_clock
from freezetune.record.summary import EpochResult
from freezetune.utils.errors import RunFault
from freezetune.utils.modules import eval_mode
from freezetune.utils.precision import autocast

__all__ = [
    "Diverged",
    "EpochStats",
    "Evaluation",
    "LoopOptions",
    "Progress",
    "Reduce",
    "Resume",
    "epoch_divergence",
    "evaluate",
    "fit_epoch",
    "no_progress",
    "nonfinite_buffers",
    "nonfinite_tensor",
    "steps_in",
    "to_device",
    "train_one_epoch",
]

T = TypeVar("T")
# A progress wrapper (the scripts pass tqdm; the library stays silent).
Progress = Callable[[Iterable[T], str, int], Iterable[T]]


def no_progress(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
    """The silent :data:`Progress`: the items unchanged."""
    return items


@dataclass
class EpochStats:
    """What one training pass measured, interrupted or not."""

    loss: float  # mean training loss
    samples: int
    steps: int
    durations: list[tuple[float, ...]]  # per step: data, forward, backward, optimizer (s)
    saved: SavedBytes | None = None  # bytes saved for backward in the first step, when asked
    loss_sum: float = 0.0  # sum of per-sample losses, float32 as accumulated (to resume a partial epoch)
    interrupted: bool = False  # stopped early by `stop`; `steps` counts the skipped ones too
    # The epoch's evaluation, per batch: (seconds of its forward, samples); empty if not evaluated.
    eval_batches: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Resume:
    """Where a partial epoch stopped: skip this many batches, then go on with these sums."""

    steps: int
    loss_sum: float
    samples: int
    after_skip: Callable[[], None] | None = None  # e.g. restore the RNG states saved at the interrupt


class Diverged(RunFault, RuntimeError):
    """Training produced a non-finite number the user would rely on: a step's loss, or at an
    epoch's end a trainable parameter, a moving buffer (BatchNorm's running statistics), the
    epoch's training loss or its validation loss. The run stops rather than train on, or save,
    such a model.

    Args:
        step: the step whose loss was not finite (None for an epoch-end check).
        last_finite: the last finite training loss seen, if any.
        what: the number that is not finite ("loss", "weights", "validation loss", ...).
        epoch: the epoch it happened in (set by the caller that knows it).
        detail: which tensor, or the value itself, e.g. "layer1.0.bn1.running_var" or "nan".
    """

    def __init__(
        self,
        step: int | None,
        last_finite: float | None,
        what: str = "loss",
        epoch: int | None = None,
        detail: str | None = None,
    ):
        self.step, self.last_finite, self.what, self.epoch, self.detail = step, last_finite, what, epoch, detail
        super().__init__()

    def __str__(self) -> str:
        where = ", ".join(
            w for w in (f"epoch {self.epoch}" if self.epoch else "", f"step {self.step}" if self.step else "") if w
        )
        detail = f" ({self.detail})" if self.detail else ""
        last = f"; the last finite loss was {self.last_finite:.4g}" if self.last_finite is not None else ""
        return (
            f"training diverged: non-finite {self.what}{detail} in {where}{last}. No model of that epoch was saved "
            "(model.pt, best.pt, checkpoint.pt): the last good checkpoint (if any) is kept. HINT: lower "
            "train.optimizer.lr, or add warm-up (train.scheduler)"
        )


@dataclass(frozen=True)
class LoopOptions:
    """How a training pass runs, beyond the model, optimizer, loader and device."""

    max_steps: int | None = None  # cap on steps (None: the whole loader)
    progress: Progress = no_progress
    count_saved: bool = False  # count the bytes saved for backward in the first step
    before_step: Callable[[int], None] | None = None  # runs before step i (the LR schedule)
    stop: Callable[[], bool] | None = None  # asked after each step; True ends the pass (Ctrl-C)
    resume: Resume | None = None  # continue a partial epoch
    # Read the loss after each forward (one host sync) and stop on a non-finite one before
    # it reaches the weights; more than max_nonfinite such steps raise Diverged, fewer are
    # skipped. Off under DDP, where ranks must not diverge in what they do: there the
    # trainer checks the weights after each epoch instead.
    check_finite: bool = True
    max_nonfinite: int = 0
    precision: str = "fp32"  # autocast dtype of the forward passes (freezetune.utils.precision)
    channels_last: bool = False  # inputs in channels-last memory format (the model is converted by setup)
    accumulate: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float | None = None  # max total norm of the trainable gradients
    label_smoothing: float = 0.0
    scaler: torch.amp.GradScaler | None = None  # fp16: scales the loss so small gradients survive
    on_step: Callable[[int, torch.Tensor], None] | None = None  # after each optimizer step: (step, mean loss)
    # After a step's backward (every micro-batch), before clipping and the optimizer: (step, scaler's
    # scale or 1.0). freeze.preset auto samples the gradients' norms here (freezetune.train.auto).
    after_backward: Callable[[int, float], None] | None = None


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """An input batch on ``device``, images (4-D) in channels-last memory format when asked; other
    inputs (a cached linear probe's 2-D features) as they are."""
    memory = torch.channels_last if channels_last and x.dim() == 4 else torch.preserve_format
    return x.to(device, non_blocking=True, memory_format=memory)


def steps_in(n_batches: int, accumulate: int, max_steps: int | None = None) -> int:
    """Optimizer steps of an epoch of ``n_batches`` micro-batches (the last group may be short)."""
    n = math.ceil(n_batches / accumulate)
    return n if max_steps is None else min(n, max_steps)


@dataclass
class _Tally:
    """A training pass's running sums: its loss stays on the device (no per-step host sync)."""

    loss: torch.Tensor
    seen: int = 0
    steps: int = 0
    nonfinite: int = 0
    last_finite: float | None = None
    saved: SavedBytes | None = None


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    options: LoopOptions = LoopOptions(),
    desc: str = "train",
) -> EpochStats:
    """One pass over ``loader``, each step timed by phase (see :class:`LoopOptions`)."""
    o = options
    model.train()  # frozen BatchNorm stays in eval: freezetune.plan.apply pins it
    clock = StepClock(device)
    tally = _Tally(torch.zeros((), device=device))
    interrupted = False
    n_steps = steps_in(len(loader), o.accumulate, o.max_steps)
    batches = iter(o.progress(loader, desc, min(len(loader), n_steps * o.accumulate)))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if o.resume is not None:
        _skip_done(batches, o, tally)
    while tally.steps < n_steps:
        clock.start()
        group = list(itertools.islice(batches, o.accumulate))
        if not group:
            clock.drop_last()
            break
        group = [(to_device(x, device, o.channels_last), y.to(device, non_blocking=True)) for x, y in group]
        clock.lap()
        if o.before_step:
            o.before_step(tally.steps)
        # set_to_none: frozen parameters keep .grad None, trainable ones skip a memset.
        optimizer.zero_grad(set_to_none=True)
        n = sum(y.shape[0] for _, y in group)
        step_loss = _forward_backward(model, group, n, o, clock, tally, device)
        if step_loss is None:  # a non-finite loss: skipped, no optimizer step
            tally.nonfinite += 1
            if tally.nonfinite > o.max_nonfinite:
                raise Diverged(tally.steps + 1, tally.last_finite)
            clock.drop_last()
            optimizer.zero_grad(set_to_none=True)
            tally.steps += 1
            continue
        _optimizer_step(optimizer, params, o, tally.steps)
        clock.lap()
        tally.loss.add_(step_loss)
        tally.seen += n
        tally.steps += 1
        if o.on_step:
            o.on_step(tally.steps, step_loss / n)
        if o.stop and tally.steps < n_steps and o.stop():
            interrupted = True
            break
    loss_sum = tally.loss.item()
    seen, steps = tally.seen, tally.steps
    return EpochStats(loss_sum / max(seen, 1), seen, steps, clock.durations(), tally.saved, loss_sum, interrupted)


def _skip_done(batches: Iterator[T], o: LoopOptions, tally: _Tally) -> None:
    """Resume a partial epoch: the same shuffle (the caller restored the loader's generator),
    minus the batches already trained on. Fetching them replays their augmentation draws;
    ``after_skip`` then puts back the RNG states saved at the interrupt."""
    assert o.resume is not None
    for _ in range(o.resume.steps * o.accumulate):
        next(batches)
    tally.loss.fill_(o.resume.loss_sum)
    tally.seen, tally.steps = o.resume.samples, o.resume.steps
    if o.resume.after_skip:
        o.resume.after_skip()


def _forward_backward(
    model: nn.Module,
    group: list[tuple[torch.Tensor, torch.Tensor]],
    n: int,
    o: LoopOptions,
    clock: StepClock,
    tally: _Tally,
    device: torch.device,
) -> torch.Tensor | None:
    """Forward and backward over one step's micro-batches (``n`` samples in all); returns the
    step's summed loss, or None at a non-finite loss (checked when ``o.check_finite``)."""
    step_loss = torch.zeros((), device=device)
    for j, (x, y) in enumerate(group):
        # Counting saved tensors costs a hook call per saved tensor: one micro-batch is enough.
        count = o.count_saved and tally.steps == 0 and j == 0
        with count_saved_tensors(model) if count else nullcontext() as counted:
            with autocast(device, o.precision):
                logits = model(x)
            # In fp32 whatever the forward's dtype: log-softmax over low-precision logits loses digits.
            loss = F.cross_entropy(logits.float(), y, label_smoothing=o.label_smoothing)
            clock.lap()
            if o.check_finite:
                value = loss.item()
                if not math.isfinite(value):
                    return None
                tally.last_finite = value
            share = loss * (y.shape[0] / n) if len(group) > 1 else loss
            (o.scaler.scale(share) if o.scaler is not None else share).backward()
        clock.lap()
        tally.saved = counted or tally.saved
        # A detached tensor: no graph is kept alive, and on CUDA no per-step host sync.
        step_loss.add_(loss.detach(), alpha=y.shape[0])  # one kernel, no temporary
    return step_loss


def _optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], o: LoopOptions, step: int) -> None:
    """The step's update from its gradients: sampled (auto), clipped, scaled (fp16) as ``o`` asks."""
    if o.after_backward is not None:
        o.after_backward(step, o.scaler.get_scale() if o.scaler is not None else 1.0)
    if o.clip_grad_norm is not None:
        if o.scaler is not None:
            o.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(params, o.clip_grad_norm)
    if o.scaler is not None:
        o.scaler.step(optimizer)  # skipped by the scaler when a gradient overflowed
        o.scaler.update()
    else:
        optimizer.step()


def nonfinite_tensor(model: nn.Module, skip: Container[str] = ()) -> tuple[str, str] | None:
    """The first tensor of ``model`` that holds NaN or inf among its trainable parameters and its
    floating-point buffers not named in ``skip``, as (kind, name); None when every one is finite.

    Frozen parameters are left out (never stepped, verified bitwise by the ledger), and so are the
    buffers in ``skip`` (pinned BatchNorm's, verified likewise). One host sync when all is finite."""
    tensors = [("weights", n, p) for n, p in model.named_parameters() if p.requires_grad]
    tensors += [("buffer", n, b) for n, b in model.named_buffers() if b.is_floating_point() and n not in skip]
    if not tensors:
        return None
    device = tensors[0][2].device
    finite = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, _, t in tensors])
    if bool(finite.all()):
        return None
    kind, name, _ = tensors[int((~finite).nonzero()[0, 0])]
    if kind == "buffer" and name.rsplit(".", 1)[-1] in ("running_mean", "running_var"):
        kind = "BatchNorm running statistics"
    return kind, name


def nonfinite_buffers(model: nn.Module) -> set[str]:
    """The floating-point buffers of ``model`` that hold NaN or inf now: taken before training, these
    are the model's by design (an attention mask of -inf), not a divergence, and are left out of
    :func:`epoch_divergence`'s check."""
    return {n for n, b in model.named_buffers() if b.is_floating_point() and not bool(torch.isfinite(b).all())}


def epoch_divergence(
    model: nn.Module,
    epoch: int,
    result: EpochResult | None,
    last_loss: float | None,
    skip: Container[str] = (),
) -> Diverged | None:
    """What diverged in ``epoch``, or None: a trainable parameter or moving buffer of ``model``
    (:func:`nonfinite_tensor`), else the epoch's training loss or its validation loss (``result``;
    None for a stopped epoch). A model whose weights are finite can still output NaN in eval mode
    (running statistics grown past float32's range on the way): its validation loss says so.
    ``last_loss``: the last finite training loss, for the message. Under DDP, where steps are not
    checked one by one, this is what catches a NaN; such a model is never checkpointed."""
    bad = nonfinite_tensor(model, skip)
    if result is not None and math.isfinite(result.train_loss):
        last_loss = result.train_loss
    if bad is not None:
        return Diverged(None, last_loss, bad[0], epoch, bad[1])
    if result is None:
        return None
    for what, value in (("training loss", result.train_loss), ("validation loss", result.val_loss)):
        if not math.isfinite(value):
            return Diverged(None, last_loss, what, epoch, f"{value}")
    return None


Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over processes (freezetune.distributed)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    reduce: Reduce | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    timed: list[tuple[float, int]] | None = None,
) -> tuple[float, float]:
    """(mean loss, accuracy) with no autograd state at all, the forward in ``precision``; the
    model's mode is restored. With ``reduce``, the sums of every process's shard: the metrics
    of the whole set. With ``timed``, each batch's forward seconds and samples are appended to
    it: summary.json's evaluation speed comes from these passes, which run anyway, not from
    extra ones (on CUDA each batch then ends in a sync)."""
    with eval_mode(model):
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        n = 0
        for x, y in loader:
            x, y = to_device(x, device, channels_last), y.to(device, non_blocking=True)
            start = device_clock(device) if timed is not None else 0.0
            with autocast(device, precision):
                logits = model(x)
            if timed is not None:
                timed.append((device_clock(device) - start, y.shape[0]))
            logits = logits.float()
            total_loss += F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
        if reduce is not None:
            sums = reduce(torch.stack([total_loss.float(), correct.float(), torch.tensor(float(n), device=device)]))
            total_loss, correct, n = sums[0], sums[1], int(sums[2].item())
        return (total_loss / max(n, 1)).item(), (correct.float() / max(n, 1)).item()


@dataclass(frozen=True)
class Evaluation:
    """How an epoch is evaluated after its training pass."""

    loader: DataLoader
    # What evaluates, when it differs from what trains (DDP's wrapper trains, the bare model
    # evaluates: DDP's forward is a collective).
    model: nn.Module | None = None
    reduce: Reduce | None = None  # sums a tensor over processes (torchrun); the metrics are the whole set's


def fit_epoch(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    device: torch.device,
    options: LoopOptions,
    evaluation: Evaluation,
) -> tuple[EpochResult | None, EpochStats]:
    """Train one epoch, then evaluate; the epoch time covers the training pass only.
    An interrupted epoch is not evaluated (its result is None)."""
    start = device_clock(device)
    try:
        stats = train_one_epoch(model, optimizer, train_loader, device, options, f"epoch {epoch}")
    except Diverged as exc:
        exc.epoch = epoch
        raise
    elapsed = device_clock(device) - start
    if stats.interrupted:
        return None, stats
    reduce = evaluation.reduce
    val_loss, val_acc = evaluate(
        evaluation.model or model,
        evaluation.loader,
        device,
        reduce,
        options.precision,
        options.channels_last,
        stats.eval_batches,
    )
    # The throughput counts the samples this process trained on in `elapsed`: a resumed epoch's
    # samples before the stop were trained (and timed) by an earlier process.
    loss, trained = stats.loss, stats.samples - (options.resume.samples if options.resume is not None else 0)
    if reduce is not None:  # the epoch's loss and throughput over every process
        totals = [stats.loss_sum, float(stats.samples), float(trained)]
        sums = reduce(torch.tensor(totals, dtype=torch.float64, device=device))
        loss, trained = (sums[0] / sums[1]).item(), int(sums[2].item())
    result = EpochResult(epoch, loss, val_loss, val_acc, elapsed, trained / elapsed if elapsed else 0.0, stats.steps)
    return result, stats
