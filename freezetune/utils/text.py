"""Plain-text tables for terminals and logs."""

from __future__ import annotations

__all__ = ["format_table"]


def format_table(headers: list[str], rows: list[list[object]], right: set[int] | None = None) -> str:
    """Columns padded to their widest cell, a dashed rule under the headers.

    Args:
        headers: the column titles.
        rows: one list of cells per row (any object; ``str()`` is taken).
        right: indices of the columns to right-align (numbers).
    """
    right = right or set()
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])])
