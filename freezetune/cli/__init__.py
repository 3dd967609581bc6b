"""The commands: argument parsing, progress bars, logging and exit codes around the
library. ``freezetune.cli.main`` dispatches ``freezetune COMMAND``; each command
module's ``main(argv)`` is also what ``scripts/COMMAND.py`` calls.

The top layer: nothing in freezetune imports it."""

from freezetune.cli.common import EXIT_CONFIG, EXIT_INTERRUPTED, guarded
from freezetune.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "EXIT_CONFIG", "EXIT_INTERRUPTED", "guarded", "main"]
