"""Plain text for terminals and logs: tables and sizes."""

from __future__ import annotations

__all__ = ["format_bytes", "format_table"]


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


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit it reaches, one decimal: '36.8 MiB', '1.17 GiB' (two
    decimals from a GiB up), '176.0 KiB', '900 bytes'. A small cache or file must not read '0.0 MiB'."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB"
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} bytes"
