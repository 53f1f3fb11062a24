"""Output people read: the one number format, aligned console tables and markdown tables (also logged as
artifacts by the tasks).

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
    cells = [[textwrap.wrap(format_number(v), MAX_CELL_WIDTH) or [""] for v in row] for row in rows]
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


def format_number(value: Any) -> str:
    """A figure as people read it: thousands separated, 3 to 4 significant digits, an exponent only below 1e-4;
    None is ``-``, anything not a float is ``str``."""
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None,
                   note: str = "") -> str:
    """A GitHub-flavoured markdown table of :func:`format_number` cells. The one escaping rule: a ``|`` in a
    cell is ``\\|`` and a line break is a space, so no cell can end its row or the table."""
    def cell(value: Any) -> str:
        return " ".join(format_number(value).splitlines()).replace("|", "\\|")

    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(map(cell, headers)) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"
