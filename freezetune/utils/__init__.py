"""Small helpers every layer may use; they import nothing else from freezetune."""

from freezetune.utils.modules import eval_mode, first_tensor, train_mode
from freezetune.utils.text import format_table

__all__ = ["eval_mode", "first_tensor", "format_table", "train_mode"]
