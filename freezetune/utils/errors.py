"""The one family every freezetune error belongs to, so the commands map it to an exit status
without knowing each class: a :class:`UserError` is a mistake in the config, data or command
line (exit 2, nothing written), a :class:`RunFault` is a fault while running (exit 1).

Each package's own errors subclass one of the two (``ConfigError``, ``FreezeError``,
``RunExistsError`` and ``BaseMismatch`` are user errors; ``Diverged``, ``CacheRefused`` and the
export failures are faults) and keep the built-in base they had, so ``except ValueError``
still catches a ``ConfigError``."""

from __future__ import annotations

import errno
import traceback
from pathlib import Path

__all__ = [
    "CannotWrite",
    "RunFault",
    "TrainingFailed",
    "UserError",
    "WriteFailed",
    "exception_line",
    "first_line",
    "os_error",
    "write_error",
]


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


# An errno that only a write can raise: such an error is a write's even when no writer says so.
_WRITE_ONLY = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# errno -> the fix, for a write that failed (" (OUT)": how the user of the command chooses where it writes).
_FULL = {errno.ENOSPC: "free space on its disk", errno.EDQUOT: "free space or raise your disk quota"}
_UNWRITABLE = {
    errno.EACCES: "choose a folder you can write (OUT)",
    errno.EPERM: "choose a folder you can write (OUT)",
    errno.EROFS: "the file system is read-only: write elsewhere (OUT)",
    errno.ENOENT: "a folder on its path is gone (removed while the command ran?): write elsewhere (OUT)",
    errno.ENOTDIR: "a part of its path is a file, not a folder: write elsewhere (OUT)",
    errno.EISDIR: "it is a folder: give a file path (OUT)",
    errno.ENAMETOOLONG: "choose a shorter path (OUT)",
}
_FAULTS = {errno.EFBIG: "write to a file system that takes larger files (OUT)"}


class CannotWrite(UserError, OSError):
    """A file cannot be written where the user asked for it (no permission, a read-only file
    system, a path that is no folder): the user's to change, as a wrong key is (exit 2).
    ``filename`` is the file asked for, never its temporary."""


class WriteFailed(RunFault, OSError):
    """Writing a file failed while running (a full disk, a fault of the device): exit 1.
    ``filename`` is the file asked for, never its temporary."""


def write_error(code: int | None, reason: str, path: str) -> CannotWrite | WriteFailed:
    """The error of a failed write of ``path``: :class:`CannotWrite` or :class:`WriteFailed` by ``code``."""
    return (CannotWrite if code in _UNWRITABLE else WriteFailed)(code, reason, path)


def os_error(
    exc: OSError, output: str | None, then: str | None = None, writing: bool | None = None
) -> UserError | RunFault:
    """What an OS error means to the user of a command: one line with the file, the system's
    reason and the fix naming the command's own flag or key, as a :class:`UserError` (exit 2)
    or a :class:`RunFault` (exit 1). Every command maps its OSErrors here.

    An output that cannot be written (permission, a read-only file system, a path that is no
    folder) is the user's to change, as a wrong key is: exit 2. A full disk, or a fault of the
    device, is exit 1; freeing space and going on (``then``) fixes it.

    Args:
        exc: the error.
        output: how the user chooses where the command writes, as the command spells it
            (``--out``, ``train.output_dir``); None for a command that has no such choice.
        then: what to do once space is freed (default: run the command again).
        writing: whether ``exc`` came from writing (None: a :class:`CannotWrite` or
            :class:`WriteFailed`, or an errno only a write raises). A failed read gets no
            advice about outputs.
    """
    if isinstance(exc, CannotWrite | WriteFailed):
        writing = True
    elif isinstance(exc, UserError | RunFault):  # one of ours already (a RunExistsError is a FileExistsError)
        return exc
    where = f"{exc.filename}: " if exc.filename else ""
    line = f"{where}{exc.strerror or exc}"
    code = exc.errno or 0
    out = f" ({output})" if output else ""
    if not (code in _WRITE_ONLY if writing is None else writing):
        if code in (errno.EACCES, errno.EPERM):
            return RunFault(f"{line}. HINT: freezetune cannot read it: check its permissions")
        return RunFault(line)
    if code in _FULL:
        return RunFault(f"{line}. HINT: {_FULL[code]}, then {then or 'run the command again'}")
    if code in _UNWRITABLE:
        return UserError(f"{line}. HINT: {_UNWRITABLE[code].replace(' (OUT)', out)}")
    if code in _FAULTS:
        return RunFault(f"{line}. HINT: {_FAULTS[code].replace(' (OUT)', out)}")
    return RunFault(line)
