"""Console output people read: aligned tables (also logged as artifacts by the tasks)."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

MAX_CELL_WIDTH = 72  # long values (reasons, paths) wrap instead of stretching the table


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[textwrap.wrap(_fmt(v), MAX_CELL_WIDTH) or [""] for v in row] for row in rows]
    widths = [max([len(str(h))] + [len(part) for r in cells for part in r[i]]) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [title] if title else []
    out += [line, "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |", line]
    for row in cells:
        for k in range(max(len(parts) for parts in row)):
            out.append("| " + " | ".join((parts[k] if k < len(parts) else "").ljust(w)
                                         for parts, w in zip(row, widths)) + " |")
    out.append(line)
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return "-" if value is None else str(value)
