"""How a freezetune program ends: every command's exit, from the console command, ``python -m
freezetune`` and ``scripts/*.py`` (not the commands' ``main``, which tests call in-process)."""

from __future__ import annotations

import gc
import sys
from typing import NoReturn

__all__ = ["exit_program"]


def exit_program(status: int) -> NoReturn:
    """End the program with ``status``, skipping the interpreter's last garbage collections.

    After a run, the process holds hundreds of thousands of objects (torch's modules, the
    model, the loaders), and the interpreter's shutdown walks them all for reference cycles
    before it exits: 2.4-3.0 s after a tiny run's last line on a busy 2-core machine, 0.24-0.38 s
    with the objects frozen first (docs/speed-and-memory.md). Nothing is lost: a command has
    written and closed its files when it returns (the tests read them after an in-process call),
    and the normal shutdown still runs, atexit handlers and logging's flush included; objects
    merely freed by the exit itself are freed by it."""
    gc.disable()
    gc.freeze()  # the objects alive now are out of the collector's reach: shutdown frees them by refcount
    sys.exit(status)
