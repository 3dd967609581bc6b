"""Command-line plumbing shared by ``scripts/*.py``: arguments, progress bars,
logging and exit codes. The only module that prints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Iterable, TypeVar

from freezetune.config import Config, ConfigError, load_config

__all__ = ["EXIT_CONFIG", "EXIT_INTERRUPTED", "add_config_args", "config_from_args", "guarded", "setup_logging", "tqdm_progress"]

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
T = TypeVar("T")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config edits, values parsed as YAML (train.epochs=2)"
    )


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)


def progress_enabled(flag: bool) -> bool:
    # Bars are for people at a terminal; CI logs get one line per epoch instead.
    return flag and sys.stderr.isatty() and not os.environ.get("CI")


def tqdm_progress(enabled: bool) -> Callable[[Iterable[T], str, int], Iterable[T]]:
    from tqdm import tqdm

    def wrap(items: Iterable[T], desc: str, total: int) -> Iterable[T]:
        return tqdm(items, desc=desc, total=total, leave=False, disable=not enabled, dynamic_ncols=True)

    return wrap


def guarded(main: Callable[[], int]) -> int:
    """Run ``main``; a config, freezing or run-folder problem exits 2 with one message."""
    from freezetune.checkpoint import BaseMismatch
    from freezetune.freezing import FreezeError
    from freezetune.record import RunExistsError

    try:
        return main()
    except (ConfigError, FreezeError, RunExistsError, BaseMismatch) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
