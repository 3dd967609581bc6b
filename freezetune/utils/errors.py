"""The one family every freezetune error belongs to, so the commands map it to an exit status
without knowing each class: a :class:`UserError` is a mistake in the config, data or command
line (exit 2, nothing written), a :class:`RunFault` is a fault while running (exit 1).

Each package's own errors subclass one of the two (``ConfigError``, ``FreezeError``,
``RunExistsError`` and ``BaseMismatch`` are user errors; ``Diverged``, ``CacheRefused`` and the
export failures are faults) and keep the built-in base they had, so ``except ValueError``
still catches a ``ConfigError``."""

from __future__ import annotations

import traceback
from pathlib import Path

__all__ = ["RunFault", "TrainingFailed", "UserError", "exception_line", "first_line"]


class UserError(Exception):
    """A mistake the user can fix in the config, the data or the command line. Raised before
    anything is written; the command prints its message as one ``error:`` line and exits 2."""


class RunFault(Exception):
    """A fault while running (training diverged, an export that does not reproduce the model,
    a child process that failed). The command prints its message and exits 1."""


class TrainingFailed(RunFault, RuntimeError):
    """A training process exited with an error (it printed its own message)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message, stripped ('' when it has none):
    torch's and the user's messages run to many lines, and an ``error:`` line takes one."""
    return next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message (file:line)``: an exception as one line of a config error."""
    first = first_line(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {first[:160]}{where}" if first else f"{type(exc).__name__}{where}"
