"""How many threads torch computes with, where that number came from, and whether the machine
has the cores for them.

torch's CPU kernels split each operation over its intra-op threads and wait for the slowest.
When other processes keep the cores busy, one descheduled thread stalls every operation: on a
2-core machine running two busy processes, a resnet18 step took 1.7 s with torch's default of
2 threads and 0.4 s with 1 (issue 25; 3-10x on the shared machine in docs/speed-and-memory.md,
"Threads"). So a run says its thread count and where it came from (``train.threads``,
``OMP_NUM_THREADS`` or torch's default), and warns once at the start when the cores other
processes leave free are fewer than its threads."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from freezetune.measure import process_age_s

__all__ = ["LOAD_WINDOW_S", "Threads", "choose_threads", "others_load", "set_threads", "threads_that_fit"]

# The 1-minute load average decays with a 60 s time constant (the kernel's exponential average).
LOAD_WINDOW_S = 60.0
# torch's count before freezetune first set it: a run with train.threads null in a process where
# an earlier run set it (compare, the demo, tests) gets torch's own count back, not the earlier run's.
_torch_own: list[int] = []


@dataclass(frozen=True)
class Threads:
    """The threads a run computes with, and the machine's load when it started."""

    torch: int  # torch.get_num_threads() once set
    source: str  # "train.threads", "OMP_NUM_THREADS" or "torch default"
    cores: int  # the machine's logical CPUs: what its load average is measured against
    load_1min: float | None  # os.getloadavg()[0]; None where the platform has none (Windows)
    own_load: float = 0.0  # this process's estimated share of load_1min (:func:`others_load`)
    omp_num_threads: str | None = None  # the environment's value, when train.threads overrides it
    workers: int = 0  # data.num_workers: busy processes of the run's own once the loaders start

    @property
    def others(self) -> float | None:
        """The load of everything but this process, or None where there is no load average."""
        return None if self.load_1min is None else max(0.0, self.load_1min - self.own_load)

    def describe(self) -> str:
        """The start line: ``threads: 2 (torch default), 2 cores, 1-minute load 0.4``."""
        source = self.source
        if self.omp_num_threads is not None:
            source += f", overriding OMP_NUM_THREADS={self.omp_num_threads}"
        load = "no load average on this platform" if self.load_1min is None else f"1-minute load {self.load_1min:.2f}"
        return f"threads: {self.torch} ({source}), {self.cores} cores, {load}"

    def warning(self) -> str | None:
        """One line when the cores others leave free are fewer than the threads (see
        :func:`threads_that_fit`), with the fix; None when they fit."""
        others = self.others
        if others is None:
            return None
        fit = threads_that_fit(self.cores, others)
        if self.torch <= fit:  # one thread always fits: the least a run can ask for
            return None
        # Loader workers are busy processes too, while they decode and augment.
        fix = f"train.threads={fit}" + (" and fewer data.num_workers" if self.workers else "")
        return (
            f"the machine is busy: a 1-minute load of {others:.2f} besides this run on {self.cores} cores leaves "
            f"{max(0.0, self.cores - others):.2f} free for {self.torch} threads, and a thread that waits for a core "
            f"stalls every step. HINT: {fix}"
        )

    def to_json(self) -> dict[str, object]:
        """summary.json's ``threads``."""
        others = self.others
        return {
            "torch": self.torch,
            "from": self.source,
            "omp_num_threads": self.omp_num_threads,
            "cores": self.cores,
            "load_1min": self.load_1min,
            "others_load_1min": None if others is None else round(others, 3),
            "workers": self.workers,
        }


def choose_threads(configured: int | None, omp_num_threads: str | None, current: int) -> tuple[int, str]:
    """The thread count and its source: ``train.threads`` when set (it wins over the environment),
    else what torch has (``current``), from ``OMP_NUM_THREADS`` when that is set."""
    if configured is not None:
        return configured, "train.threads"
    if omp_num_threads:
        return current, "OMP_NUM_THREADS"
    return current, "torch default"


def others_load(load_1min: float, cpu_s: float, age_s: float) -> float:
    """``load_1min`` less this process's share of it: the process has kept ``cpu_s / age_s`` cores
    busy on average for ``age_s`` seconds, and the kernel's average has counted
    ``1 - exp(-age_s / 60)`` of a constant load that old."""
    if age_s <= 0:
        return load_1min
    own = (cpu_s / age_s) * (1.0 - math.exp(-age_s / LOAD_WINDOW_S))
    return max(0.0, load_1min - own)


def threads_that_fit(cores: int, others: float) -> int:
    """The most threads that each get a core of their own while others' load holds the rest: the
    cores less the whole busy processes in others' load, at least 1.

    A fraction of a process is not counted: the average trails a burst (a shell, a short compile)
    by a minute, and a warning it set off would cost a quiet machine's second thread (2 threads
    ran a resnet18 step in 110 ms against 1 thread's 180 ms on 2 idle cores, issue 25), while whole
    busy processes on the threads' cores cost 3-10x (docs/speed-and-memory.md, "Threads")."""
    return max(1, cores - math.floor(others))


def set_threads(configured: int | None, workers: int = 0) -> Threads:
    """Set torch's intra-op threads for a run (before its model is built) and return the record.

    Args:
        configured: ``train.threads``; None leaves torch's own count, or ``OMP_NUM_THREADS``'s.
        workers: ``data.num_workers`` (unaffected; named in the warning's fix).
    """
    if not _torch_own:
        _torch_own.append(torch.get_num_threads())
    omp = os.environ.get("OMP_NUM_THREADS") or None
    count, source = choose_threads(configured, omp, _torch_own[0])
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    try:
        load: float | None = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows has no load average
        load = None
    own = 0.0
    if load is not None:
        times = os.times()  # this process's CPU seconds: its threads, not its finished children
        own = load - others_load(load, times.user + times.system, process_age_s()[0])
    return Threads(
        torch=count,
        source=source,
        cores=os.cpu_count() or 1,
        load_1min=load,
        own_load=own,
        omp_num_threads=omp if configured is not None else None,
        workers=workers,
    )
