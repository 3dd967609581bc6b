"""Command-line plumbing shared by the commands (``freezetune train|plan|...`` and
``scripts/*.py``): arguments, progress bars, logging and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TextIO, TypeVar

from freezetune.utils import RunFault, UserError, first_line
from freezetune.utils.errors import os_error

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAULT",
    "EXIT_INTERRUPTED",
    "add_config_args",
    "add_debug_arg",
    "guarded",
    "outlive_the_reader",
    "progress_enabled",
    "setup_logging",
    "tqdm_progress",
]

EXIT_CONFIG = 2  # a mistake in the config, data or command line: nothing was written
EXIT_FAULT = 1  # a fault while running: diverged, disk full, a bug
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
T = TypeVar("T")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and the ``key=value`` edits after it."""
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config edits, values parsed as YAML (train.epochs=2)"
    )


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log lines (no timestamps) to stderr; ``quiet``: warnings only. Output to a reader that
    went away is dropped from now on (:func:`outlive_the_reader`)."""
    outlive_the_reader()
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


class _Outliving:
    """A text stream (stdout, stderr) whose writes cannot fail for want of a reader: once the
    pipe is closed (`freezetune train ... | head -5` after head exits) or the terminal is gone
    (EIO), the stream's file descriptor is pointed at /dev/null and the output is dropped. The run
    goes on, and its record (the run folder) is what it was going to be."""

    _GONE = (errno.EPIPE, errno.EIO)

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def _drop(self, exc: OSError) -> None:
        if exc.errno not in self._GONE:
            raise exc
        self._gone = True
        # Whatever is still buffered is written to /dev/null (by the next flush, or at exit),
        # where Python's flush at exit would otherwise raise the same error and print it.
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, text: str) -> int:
        """Write ``text``, or drop it when the reader went away."""
        if not self._gone:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._drop(exc)
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text)  # to /dev/null now: keeps the stream's buffer draining
        return len(text)

    def flush(self) -> None:
        """Flush, or drop what is buffered when the reader went away."""
        try:
            self._stream.flush()
        except OSError as exc:
            if self._gone and exc.errno in self._GONE:
                return
            self._drop(exc)
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # isatty, fileno, encoding, buffer, ...


def outlive_the_reader() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` drop output once their reader is gone (a closed
    pipe or terminal) instead of raising BrokenPipeError into a run. Safe to call twice."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _Outliving):
            setattr(sys, name, _Outliving(stream))


def progress_enabled(flag: bool) -> bool:
    """Whether to draw progress bars: asked for, and stderr is a terminal outside CI."""
    # Bars are for people at a terminal; CI logs get one line per epoch instead.
    return flag and sys.stderr.isatty() and not os.environ.get("CI")


def tqdm_progress(enabled: bool) -> Callable[[Iterable[T], str, int], Iterable[T]]:
    """A :data:`freezetune.train.Progress` drawing tqdm bars (or none, when not ``enabled``)."""
    from tqdm import tqdm  # only the commands that train draw bars

    def wrap(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
        return tqdm(items, desc=desc, total=total, leave=False, disable=not enabled, dynamic_ncols=True)

    return wrap


def add_debug_arg(parser: argparse.ArgumentParser) -> None:
    """``--debug``: show the traceback of an error (also FREEZETUNE_DEBUG=1)."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also FREEZETUNE_DEBUG=1)")


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line reported like every other: one ``error:``
    line naming the argument and where the usage is, exit status 2 (argparse prints the whole
    usage first and prefixes the program's name)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        """Print ``error: message (PROG --help)`` and exit 2."""
        self.exit(EXIT_CONFIG, f"error: {message} (see {self.prog} --help)\n")


def guarded(main: Callable[[], int], debug: bool = False, output: str | None = None) -> int:
    """Run ``main`` and turn every failure into one ``error:`` message and an exit status:
    2 for a :class:`~freezetune.utils.UserError`, a mistake in the config, data or command line
    (nothing written); 1 for a :class:`~freezetune.utils.RunFault` or any other fault while
    running (diverged, disk full, a bug); 130 for Ctrl-C. A traceback only with ``debug`` or
    FREEZETUNE_DEBUG=1.

    An OSError is mapped by :func:`freezetune.utils.errors.os_error`, whose hints name ``output``:
    how the user of this command chooses where it writes (``--out``, ``train.output_dir``)."""
    debug = debug or os.environ.get("FREEZETUNE_DEBUG", "") not in ("", "0")
    try:
        return main()
    except BrokenPipeError:
        # The reader went away (`freezetune tour | head`): it had what it wanted, so no error line.
        # stdout goes to devnull, or Python's flush at exit would raise the same error again.
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a test's capture has no fd
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAULT
    except OSError as exc:  # a failed write is one of ours too, but its hint names this command's output
        mapped = os_error(exc, output)
        return _error(str(mapped), EXIT_CONFIG if isinstance(mapped, UserError) else EXIT_FAULT, debug)
    except UserError as exc:
        return _error(str(exc), EXIT_CONFIG, debug)
    except RunFault as exc:
        return _error(str(exc), EXIT_FAULT, debug)
    except KeyboardInterrupt as exc:
        if debug:
            traceback.print_exc()
        # Only what is known: a run aborted in its training loop says what it left there
        # (freezetune.train.runner), a stopped run its caller needed whole where to resume it.
        print(str(exc) or "interrupted at once", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        text = str(exc)
        if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text:
            first = first_line(exc)[:120]
            message = f"out of memory ({type(exc).__name__}: {first}). HINT: lower data.batch_size or data.image_size"
        else:
            message = f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for the traceback"
        return _error(message, EXIT_FAULT, debug)


def _error(message: str, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return status
