"""Step timing split into phases, cheap enough to leave on in every run.

On CUDA each boundary records an event (no host sync inside the loop; the
events are read once, after the epoch); on CPU it reads ``perf_counter``."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch

from freezetune.utils.modules import eval_mode
from freezetune.utils.precision import autocast

__all__ = [
    "PHASES",
    "PhaseMedians",
    "StepClock",
    "batch_speed",
    "device_clock",
    "eval_speed",
    "medians",
    "process_age_s",
]

PHASES = ("data", "forward", "backward", "optimizer")

_IMPORTED = time.perf_counter()  # the fallback's origin: when freezetune's measure package first loaded


def process_age_s() -> tuple[float, str]:
    """Seconds since this process started, and from what: on Linux the kernel's record of the
    start (``/proc/self/stat``'s start time against ``/proc/uptime``, 10 ms resolution), so the
    interpreter's start and every import count, torch's included; elsewhere the time since
    freezetune's measure package was imported, which misses what came before it."""
    try:
        with open("/proc/self/stat") as f:
            # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in clock ticks since boot
        return max(0.0, uptime - started), "process start"
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED, "freezetune import"


class StepClock:
    """Call ``start()`` before fetching a batch and ``lap()`` after each phase.

    On CUDA, creating and recording five events costs a launch-bound step
    (3-4 ms for resnet18 at 32 px on an H100) several percent, so only every
    ``cuda_every``-th step is timed there; medians need no more. On CPU every
    step is timed: ``perf_counter`` costs well under a microsecond."""

    def __init__(self, device: torch.device, cuda_every: int = 8) -> None:
        self.cuda = device.type == "cuda"
        self.every = cuda_every if self.cuda else 1
        self._marks: list[list] = []
        self._steps = 0
        self._on = False

    def _now(self) -> object:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        """Mark the start of a step (before its batch is fetched)."""
        self._on = self._steps % self.every == 0
        self._steps += 1
        if self._on:
            self._marks.append([self._now()])

    def lap(self) -> None:
        """Mark the end of a phase: data, forward, backward, optimizer."""
        if self._on:
            self._marks[-1].append(self._now())

    def drop_last(self) -> None:
        """Forget a step that did not complete (the loader ran out)."""
        if self._on:
            self._marks.pop()
        self._steps -= 1

    def durations(self) -> list[tuple[float, ...]]:
        """Seconds per phase (data, forward, backward, optimizer) for every timed, completed
        step; a step of several micro-batches (gradient accumulation) laps forward and backward
        once per micro-batch, summed here."""
        if self.cuda:
            torch.cuda.synchronize()
            laps = [[a.elapsed_time(b) / 1000.0 for a, b in zip(m, m[1:])] for m in self._marks]
        else:
            laps = [[b - a for a, b in zip(m, m[1:])] for m in self._marks]
        return [_fold(d) for d in laps]


def _fold(laps: list[float]) -> tuple[float, ...]:
    """data, forward_1, backward_1, ..., forward_n, backward_n, optimizer -> the four phases."""
    if len(laps) < 4 or len(laps) % 2:
        return tuple(laps)  # not a training step's pattern (a caller's own use): as measured
    return (laps[0], sum(laps[1:-1:2]), sum(laps[2:-1:2]), laps[-1])


@dataclass
class PhaseMedians:
    """Median seconds per phase of a training step, over the steps after warm-up."""

    data: float
    forward: float
    backward: float
    optimizer: float
    step: float  # median of whole steps, not the sum of the phase medians
    compute: float  # median of forward + backward + optimizer
    steps: int

    def to_json(self) -> dict:
        """The ``speed`` keys of summary.json these medians fill."""
        return {
            "step_time_s": self.step,
            "compute_time_s": self.compute,
            "data_s": self.data,
            "forward_s": self.forward,
            "backward_s": self.backward,
            "optimizer_s": self.optimizer,
            "measured_steps": self.steps,
        }


def medians(durations: list[tuple[float, ...]], warmup: int) -> PhaseMedians | None:
    """Medians over the steps after the first ``warmup`` ones (or all, if too few)."""
    steps = [d for d in durations if len(d) == len(PHASES)]
    measured = steps[warmup:] if len(steps) > warmup else steps
    if not measured:
        return None
    col = lambda i: statistics.median(d[i] for d in measured)  # noqa: E731
    return PhaseMedians(
        data=col(0),
        forward=col(1),
        backward=col(2),
        optimizer=col(3),
        step=statistics.median(sum(d) for d in measured),
        compute=statistics.median(sum(d[1:]) for d in measured),
        steps=len(measured),
    )


def device_clock(device: torch.device) -> float:
    """``perf_counter`` once ``device`` has finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def eval_speed(
    model: torch.nn.Module,
    batches: list[torch.Tensor],
    device: torch.device,
    rounds: int = 3,
    precision: str = "fp32",
    warmup: bool = True,
) -> dict:
    """Forward throughput in eval mode under ``inference_mode`` versus the same
    forward with autograd recording, interleaved over ``rounds``, both in ``precision``,
    after one untimed pass each way unless ``warmup`` is False (a model that has just
    trained and evaluated has its kernels chosen and its memory allocated already).

    The gap is what not tracking gradients saves: no graph nodes, no tensors
    saved for backward, no version counters."""

    def timed(mode: type) -> float:
        start = device_clock(device)
        with mode(), autocast(device, precision):
            for x in batches:
                model(x)
        return device_clock(device) - start

    with eval_mode(model):
        if warmup:  # allocator, kernels, caches
            timed(torch.inference_mode)
            timed(torch.enable_grad)
        no_grad_s, grad_s = [], []
        for _ in range(rounds):
            no_grad_s.append(timed(torch.inference_mode))
            grad_s.append(timed(torch.enable_grad))
    n = sum(x.shape[0] for x in batches)
    a, b = statistics.median(no_grad_s), statistics.median(grad_s)
    return {"eval_samples_per_s": n / a, "eval_grad_samples_per_s": n / b, "eval_speedup_no_grad": b / a}


def batch_speed(batches: list[tuple[float, int]]) -> dict | None:
    """Evaluation throughput from batches an evaluation already timed (seconds, samples each):
    samples per second over all but the first batch (its allocations and kernel choices are a
    start-up cost; all when there is only one), and the median batch's seconds. None for none."""
    if not batches:
        return None
    warm = batches[1:] or batches
    seconds = sum(s for s, _ in warm)
    return {
        "eval_samples_per_s": sum(n for _, n in warm) / seconds if seconds > 0 else None,
        "eval_batch_s": statistics.median(s for s, _ in warm),
        "eval_batches_timed": len(warm),
    }
