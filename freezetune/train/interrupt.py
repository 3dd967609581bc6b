"""Ctrl-C (and SIGTERM) as a request, not an exception.

A KeyboardInterrupt raised inside ``optimizer.step()`` could leave half the
parameters updated; a checkpoint of that state would resume into a run that
never existed. So while training, SIGINT only sets a flag that the loop reads
between steps, then checkpoints and stops. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType

__all__ = ["StopRequest"]

log = logging.getLogger(__name__)


class StopRequest:
    """``with StopRequest() as stop: ... if stop(): ...``; also settable by hand (tests)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._previous_term: object = None

    def __call__(self) -> bool:
        """Whether a stop was requested."""
        return self.requested

    def request(self) -> None:
        """Ask the loop to stop after the current step."""
        self.requested = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt: finishing this step, then saving a checkpoint (Ctrl-C again to abort at once)")

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread.
        # SIGTERM (a scheduler's or `timeout`'s stop) is asked to stop the same way.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._previous_term = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            signal.signal(signal.SIGTERM, self._previous_term)  # type: ignore[arg-type]
