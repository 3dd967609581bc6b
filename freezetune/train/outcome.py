"""What :func:`freezetune.train.run` returns: a finished run with its summary, or a run
stopped part-way with where to resume it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from freezetune.record import Summary

__all__ = ["Finished", "Interrupted", "Outcome", "finished"]


@dataclass(frozen=True)
class Finished:
    """A run that trained all its epochs (or stopped early by train.early_stopping): its
    ``summary.json``, as written."""

    summary: Summary


@dataclass(frozen=True)
class Interrupted:
    """A run stopped (Ctrl-C) in or after ``epoch``, ``steps`` optimizer steps into it; its
    checkpoint in ``run_dir`` continues it (``--resume``)."""

    name: str
    epoch: int
    steps: int
    run_dir: Path


Outcome = Finished | Interrupted


def finished(outcome: Outcome) -> Summary:
    """The summary of a run its caller needs whole (a benchmark, a harness): a stop (Ctrl-C)
    goes on up as the interrupt it was, with where the run can be resumed."""
    if isinstance(outcome, Interrupted):
        raise KeyboardInterrupt(f"{outcome.name}: stopped in epoch {outcome.epoch}; resume from {outcome.run_dir}")
    return outcome.summary
