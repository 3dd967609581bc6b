"""Small helpers every layer may use; they import nothing else from freezetune. The error
family (a user's mistake, a fault while running) lives here, at the bottom, so every layer's
errors can join it.

The torch helpers (``eval_mode``, ``autocast``, ...) load on first use: the error family and
the text helpers are wanted by layers that must not pay for importing torch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from freezetune.utils.errors import RunFault, TrainingFailed, UserError, exception_line, first_line
from freezetune.utils.text import format_bytes, format_table

if TYPE_CHECKING:
    from freezetune.utils.modules import eval_mode, first_tensor, train_mode
    from freezetune.utils.precision import DTYPES, autocast, dtype_of, precision_problem

__all__ = [
    "DTYPES",
    "RunFault",
    "TrainingFailed",
    "UserError",
    "autocast",
    "dtype_of",
    "eval_mode",
    "exception_line",
    "first_line",
    "first_tensor",
    "format_bytes",
    "format_table",
    "precision_problem",
    "train_mode",
]

# name -> the module that defines it, imported when the name is first asked for (PEP 562).
_LAZY = {
    "eval_mode": "modules",
    "first_tensor": "modules",
    "train_mode": "modules",
    "DTYPES": "precision",
    "autocast": "precision",
    "dtype_of": "precision",
    "precision_problem": "precision",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
