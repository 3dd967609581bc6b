"""Command-line plumbing shared by the commands (``freezetune train|plan|...`` and
``scripts/*.py``): arguments, progress bars, logging and exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import TypeVar

from freezetune.config import Config, ConfigError, load_config
from freezetune.plan import FreezeError
from freezetune.record import BaseMismatch, RunExistsError

__all__ = [
    "EXIT_CONFIG",
    "EXIT_INTERRUPTED",
    "add_config_args",
    "config_from_args",
    "guarded",
    "progress_enabled",
    "setup_logging",
    "tqdm_progress",
]

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
T = TypeVar("T")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and the ``key=value`` edits after it."""
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config edits, values parsed as YAML (train.epochs=2)"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The config the arguments name, with their edits."""
    return load_config(args.config, args.overrides)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log lines (no timestamps) to stderr; ``quiet``: warnings only."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


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


def guarded(main: Callable[[], int]) -> int:
    """Run ``main``; a config, freezing or run-folder problem exits 2 with one message."""
    try:
        return main()
    except (ConfigError, FreezeError, RunExistsError, BaseMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
