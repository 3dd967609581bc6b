"""Numbers as YAML gives them: PyYAML's ``safe_load`` reads ``1e-3`` as the string
``'1e-3'`` (YAML 1.1 needs a dot in a float), so text that ``float()`` accepts counts."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["finite_number", "number"]


def number(value: Any) -> float | None:
    """``value`` as an int or float (numeric text included), else None; booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float (text such as PyYAML's ``'1e-3'`` included), else None."""
    n = number(value)
    return float(n) if n is not None and math.isfinite(n) else None
