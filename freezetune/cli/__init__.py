"""The commands: argument parsing, progress bars, logging and exit codes around the
library. ``freezetune.cli.main`` dispatches ``freezetune COMMAND``; each command
module's ``main(argv)`` is also what ``scripts/COMMAND.py`` calls.

The top layer: nothing in freezetune imports it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from freezetune.cli.main import COMMANDS, main

if TYPE_CHECKING:
    from freezetune.cli.common import EXIT_CONFIG, EXIT_INTERRUPTED, guarded

__all__ = ["COMMANDS", "EXIT_CONFIG", "EXIT_INTERRUPTED", "guarded", "main"]

# freezetune.cli.common imports the library (torch among it): loaded when a command runs, so that
# `freezetune --help` and `freezetune.cli.main` alone do not pay for it.
_LAZY = ("EXIT_CONFIG", "EXIT_INTERRUPTED", "guarded")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("freezetune.cli.common"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'freezetune.cli' has no attribute {name!r}")
