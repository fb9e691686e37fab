"""Plain-text tables for the terminal: no dependency, right-aligned numbers."""

from __future__ import annotations

from collections.abc import Sequence


def fmt_number(value: object, digits: int = 4) -> str:
    """`digits` significant figures for floats, `-` for `None`, `str()` otherwise."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if 1e6 <= abs(value) < 1e10 else f"{value:.{digits}g}"
    return str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Renders rows under a header, columns padded to fit, numbers right-aligned."""
    cells = [[fmt_number(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line([str(h) for h in header]), line(["-" * w for w in widths]), *(line(r) for r in cells)])
