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

__all__ = ["FINISHING", "STOPPING", "StopRequest", "handle_stops", "restore_handlers"]

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
        self._previous = handle_stops(self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        restore_handlers(self._previous)
        self._previous = {}


def handle_stops(handler: Callable[[int, FrameType | None], None]) -> dict[int, object]:
    """Send SIGINT and SIGTERM (a scheduler's or `timeout`'s stop) to ``handler`` and ignore SIGHUP,
    so a closed terminal does not end the work; returns the handlers they replace, for
    :func:`restore_handlers`. Nothing changes outside the main thread, where signals cannot be handled."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, object] = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return previous


def restore_handlers(previous: dict[int, object]) -> None:
    """Put back the handlers :func:`handle_stops` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
