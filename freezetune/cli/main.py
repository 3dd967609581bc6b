"""``freezetune COMMAND ...``: one console command for every tool (``python -m
freezetune`` is the same). Each command is also a thin script in ``scripts/``."""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

from freezetune.utils.program import exit_program

__all__ = ["COMMANDS", "main", "program"]

# command -> (module under freezetune.cli, one line of help). Modules are imported only
# when their command runs: `freezetune plan` does not pay for the benchmark's imports.
COMMANDS = {
    "train": ("train", "train one config and write its run record"),
    "plan": ("plan", "show what a config freezes, its optimizer groups, schedule and predicted cost"),
    "compare": ("compare", "train several configs over seeds (or read finished runs) and write a comparison report"),
    "report": ("report", "a finished run's own report: its learning curve and what it cost"),
    "benchmark": ("benchmark", "time freezetune's step against a hand-written PyTorch loop"),
    "predict": ("predict", "predict the classes of image files with a finished run's model"),
    "evaluate": ("evaluate", "accuracy, per-class precision/recall and confusion matrix on a labelled folder"),
    "export": ("export", "write a run's model as TorchScript, ExportedProgram or ONNX, checked against it"),
    "tour": ("tour", "autograd step by step: PyTorch's tutorial example, then a frozen network's real step"),
    "demo": ("demo", "the Fashion-MNIST transfer demo (pretrain, fine-tune seven ways, report)"),
    "fetch-data": ("fetch_data", "put Fashion-MNIST under data/FashionMNIST/raw"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return (
        "usage: freezetune COMMAND [ARGS ...]\n\ncommands:\n"
        + "\n".join(lines)
        + ("\n\n`freezetune COMMAND --help` describes each one.")
    )


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default: ``sys.argv[1:]``) to its command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; one of {', '.join(COMMANDS)} (freezetune --help)", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"freezetune.cli.{COMMANDS[name][0]}")  # torch: seconds
    except KeyboardInterrupt:  # Ctrl-C before the command began: nothing was done, and no traceback
        print("interrupted at once", file=sys.stderr)
        return 130  # freezetune.cli.common.EXIT_INTERRUPTED, which imports what is being interrupted here
    return module.main(rest, prog=f"freezetune {name}")


def program() -> NoReturn:
    """The ``freezetune`` console command and ``python -m freezetune``: :func:`main`, then the
    process's exit with its status (:func:`freezetune.utils.program.exit_program`)."""
    exit_program(main())
