"""Progress for long work: a bar on a terminal, nothing when output is a file or CI log."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    if not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)
