"""Ctrl-C (and SIGTERM) as a request, not an exception.

A KeyboardInterrupt raised inside ``optimizer.step()`` could leave half the
parameters updated; a checkpoint of that state would resume into a run that
never existed. So while training, SIGINT only sets a flag that the loop reads
between steps, then checkpoints and stops. A second Ctrl-C interrupts at once.

A terminal's Ctrl-C reaches every process of its foreground group, the DataLoader's
workers too. They are forked from the trainer with its handler installed: the handler
acts only in the process that installed it, so the request is made (and said) once.

A closed terminal (SIGHUP) does not end a run: it is ignored while training, and what
the run would print is dropped (freezetune.cli.common); the run folder is the record.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

__all__ = ["FINISHING", "STOPPING", "StopRequest"]

log = logging.getLogger(__name__)

# What a first Ctrl-C does, as the handler says it: the runner tells which applies now.
STOPPING = "finishing this step, then saving a checkpoint and stopping"
FINISHING = "the run has begun its last step or is past it, so it finishes instead: model.pt and summary.json as usual"


class StopRequest:
    """``with StopRequest() as stop: ... if stop(): ...``; also settable by hand (tests).

    ``describe`` says what a first Ctrl-C will do (:data:`STOPPING` unless the runner
    knows better); the handler prints it once, with how to abort at once."""

    def __init__(self) -> None:
        self.requested = False
        self.describe: Callable[[], str] = lambda: STOPPING
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def __call__(self) -> bool:
        """Whether a stop was requested."""
        return self.requested

    def request(self) -> None:
        """Ask the loop to stop after the current step."""
        self.requested = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the trainer got the same signal and decides
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: %s (Ctrl-C again to abort at once)", self.describe())

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread.
        # SIGTERM (a scheduler's or `timeout`'s stop) is asked to stop the same way.
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous = {}
