"""Small helpers every layer may use; they import nothing else from freezetune."""

from freezetune.utils.modules import eval_mode, first_tensor, train_mode
from freezetune.utils.precision import DTYPES, autocast, dtype_of, precision_problem
from freezetune.utils.text import format_table

__all__ = [
    "DTYPES",
    "autocast",
    "dtype_of",
    "eval_mode",
    "first_tensor",
    "format_table",
    "precision_problem",
    "train_mode",
]
