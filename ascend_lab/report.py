"""Console output people read: aligned tables (also logged as artifacts by the tasks).

Widths are terminal display columns, not characters: Chinese (and other East Asian wide) characters
take two columns, so a table with Chinese prompts or paths stays aligned.
"""

from __future__ import annotations

import textwrap
import unicodedata
from typing import Any, Sequence

MAX_CELL_WIDTH = 72  # long values (reasons, paths) wrap instead of stretching the table


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal (wide and fullwidth characters count 2, combining marks 0)."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def pad(text: str, width: int) -> str:
    return text + " " * max(width - display_width(text), 0)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    cells = [[textwrap.wrap(_fmt(v), MAX_CELL_WIDTH) or [""] for v in row] for row in rows]
    widths = [max([display_width(str(h))] + [display_width(part) for r in cells for part in r[i]])
              for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [title] if title else []
    out += [line, "| " + " | ".join(pad(str(h), w) for h, w in zip(headers, widths)) + " |", line]
    for row in cells:
        for k in range(max(len(parts) for parts in row)):
            out.append("| " + " | ".join(pad(parts[k] if k < len(parts) else "", w)
                                         for parts, w in zip(row, widths)) + " |")
    out.append(line)
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return "-" if value is None else str(value)
