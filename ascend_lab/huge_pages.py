"""Transparent huge pages for the host memory a runtime's weights live in (``runtime.huge_pages``).

Why: a decode step at batch 1 streams every weight once (:mod:`ascend_lab.bench.roofline`). Over 4 KiB pages
that is one TLB miss per 4 KiB read; over 2 MiB pages one per 2 MiB. Linux hosts commonly run transparent huge
pages in ``madvise`` mode (``/sys/kernel/mm/transparent_hugepage/enabled``), where only memory a program asked
for gets them. numpy asks for its large arrays (so the roofline's read kernels already read through 2 MiB
pages); onnxruntime's and torch's allocators do not, so a CPU session's weights sit in 4 KiB pages. Measured on a
2-core EPYC VM, Qwen2.5-0.5B shapes, fp32, batch 1, runs alternating between 4 KiB and 2 MiB pages: 2 MiB pages
were faster in 7 of 7 pairs, by 1–14 % (82.6–88.4 → 72.8–77.9 ms/token in one series of four, 77.3–86.0 →
72.2–85.3 in a series of three CLI jobs).

How: :func:`huge_pages_for_new_memory` notes, before a load, which 2 MiB ranges of the anonymous private writable
mappings (``/proc/self/maps``) are wholly resident (``mincore``). After it, the ranges wholly resident now and not
before hold what the load wrote (the weights and onnxruntime's prepacked copies of them, in fresh mmaps or an
extended heap). malloc's freed heap memory is handed back to the kernel first (``malloc_trim``), so the load's
allocations that reuse it show up the same way. Ranges are compared by address, not by mapping: the kernel
merges adjacent mappings, so memory written before the load can share a mapping with the load's. Only wholly
resident ranges are touched (a range with holes would be filled, and the process would grow by memory nobody
wrote): they are advised
``MADV_HUGEPAGE`` and collapsed into huge pages at once with ``MADV_COLLAPSE`` (Linux ≥ 6.1; it copies the pages,
about a second per GB here, counted in the load time). Nothing about the memory's contents or the program's
behaviour changes, only its page size. Where this cannot be done (not Linux, a kernel without
``MADV_COLLAPSE``, THP off, no free huge pages) the load goes on in 4 KiB pages and the report says why.

``sudo sh -c 'echo always > /sys/kernel/mm/transparent_hugepage/enabled'`` gives every allocation huge pages
from the start (no copy at load); on such a host the collapse finds the memory huge already and costs little.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20  # bytes: the x86-64 and arm64 (4 KiB base page) PMD size
MADV_HUGEPAGE = 14  # <asm-generic/mman-common.h>
MADV_COLLAPSE = 25  # <asm-generic/mman-common.h>, Linux 6.1
MAPS = Path("/proc/self/maps")
BASE_PAGE = 4096
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
GB = 1e9

Span = tuple[int, int]  # [start, end) addresses


@dataclass
class HugePages:
    """What :func:`huge_pages_for_new_memory` did: bytes it asked to collapse and bytes collapsed."""

    candidate_bytes: int = 0  # whole, fully resident huge pages of the memory the load wrote
    collapsed_bytes: int = 0
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # errno name → bytes of the spans that failed with it
    unavailable: str = ""  # why nothing was tried

    def metrics(self) -> dict[str, float]:
        """``huge_page_gb`` (the loaded memory now in 2 MiB pages) and ``huge_page_seconds`` (the collapse)."""
        return {"huge_page_gb": self.collapsed_bytes / GB, "huge_page_seconds": self.seconds}

    def describe(self) -> str:
        if self.unavailable:
            return f"huge pages: not used ({self.unavailable})"
        text = (f"huge pages: {self.collapsed_bytes / GB:.2f} of {self.candidate_bytes / GB:.2f} GB loaded "
                f"moved to 2 MiB pages in {self.seconds:.1f} s")
        if self.failures:
            text += " (not moved: " + "; ".join(f"{n / 2**20:.0f} MiB, {name}: {_ERRNO_MEANING.get(name, name)}"
                                               for name, n in sorted(self.failures.items())) + ")"
        return text


_ERRNO_MEANING = {
    "EINVAL": "not eligible (new threads' stacks never are; a kernel before 6.1 has no MADV_COLLAPSE)",
    "EAGAIN": "pages busy, try again",
    "ENOMEM": "no free 2 MiB page (memory fragmented or short)",
    "EPERM": "huge pages disabled for this process (prctl PR_SET_THP_DISABLE)",
}


def anonymous_mappings(maps: Path = MAPS) -> list[Span]:
    """The process's anonymous private writable mappings: malloc's heap and its mmaps."""
    spans = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        perms, path = fields[1], (fields[5].strip() if len(fields) > 5 else "")
        if perms.startswith("rw") and perms[3] == "p" and path in ("", "[heap]"):
            spans.append(tuple(int(x, 16) for x in fields[0].split("-")))
    return spans


def whole_huge_pages(span: Span) -> Span:
    """``span`` trimmed inward to whole huge pages (empty where it holds none)."""
    lo, hi = -(-span[0] // HUGE_PAGE) * HUGE_PAGE, span[1] // HUGE_PAGE * HUGE_PAGE
    return (lo, max(lo, hi))


def full_huge_pages(span: Span, resident_pages: Callable[[Span], "np.ndarray"]) -> list[int]:
    """Start addresses of the whole huge pages in ``span`` whose every base page is resident (``resident_pages``:
    one flag per base page, from ``mincore``). Collapsing a huge page with holes would fill them: the process would
    grow by memory nobody wrote."""
    import numpy as np

    lo, hi = whole_huge_pages(span)
    if hi == lo:
        return []
    full = (resident_pages((lo, hi)).reshape(-1, HUGE_PAGE // BASE_PAGE) & 1).all(axis=1)
    return [lo + int(i) * HUGE_PAGE for i in np.flatnonzero(full)]


def wholly_resident(spans: Iterable[Span], resident_pages: Callable[[Span], "np.ndarray"]) -> set[int]:
    """Start addresses of the wholly resident huge pages of all ``spans`` (:func:`full_huge_pages` of each)."""
    return {page for span in spans for page in full_huge_pages(span, resident_pages)}


def loaded_runs(full_before: set[int], after: Iterable[Span],
                resident_pages: Callable[[Span], "np.ndarray"]) -> list[Span]:
    """Runs of the whole huge pages of the ``after`` mappings that are wholly resident now and were not before the
    load (``full_before``, :func:`wholly_resident` then): memory the load wrote, in fresh mmaps, an extended heap,
    or freed heap memory that :func:`release_freed_heap` had handed back before it.

    Pages are compared by address, not mappings by span: the kernel merges adjacent mappings, so memory written
    before the load can share a mapping with memory written during it.
    """
    pages = sorted(wholly_resident(after, resident_pages) - full_before)
    runs: list[Span] = []
    for page in pages:
        if runs and runs[-1][1] == page:
            runs[-1] = (runs[-1][0], page + HUGE_PAGE)
        else:
            runs.append((page, page + HUGE_PAGE))
    return runs


def release_freed_heap() -> None:
    """Hand malloc's freed, still resident memory back to the kernel (glibc's ``malloc_trim``, all arenas).

    Why: glibc reuses freed heap memory for later allocations, and a load after other work (an export in the same
    process frees gigabytes) would write its weights into pages resident already, which residency alone cannot
    tell from memory nobody touched. Released first, they become resident again only where the load writes. A
    libc without ``malloc_trim`` (musl) skips this; such reused memory then stays in 4 KiB pages.
    """
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def thp_mode() -> str:
    """The host's transparent huge page mode (``always``, ``madvise`` or ``never``); '' where there is none."""
    try:
        text = THP_ENABLED.read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def unavailable_reason() -> str:
    """Why huge pages cannot be asked for here, or '' where they can."""
    if not sys.platform.startswith("linux"):
        return f"transparent huge pages are a Linux feature; this is {sys.platform}"
    if not MAPS.exists():
        return f"{MAPS} is not readable"
    if os.sysconf("SC_PAGE_SIZE") != BASE_PAGE:
        return f"base pages here are {os.sysconf('SC_PAGE_SIZE')} bytes; huge pages are handled for 4 KiB ones"
    mode = thp_mode()
    if not mode:
        return f"this kernel has no transparent huge pages ({THP_ENABLED} is missing)"
    if mode == "never":
        return f"{THP_ENABLED} is 'never' (set it to madvise or always)"
    return ""


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def _resident_pages(span: Span) -> "np.ndarray":
    """One ``mincore`` flag per base page of ``span`` (bit 0: resident)."""
    import numpy as np

    flags = np.zeros((span[1] - span[0]) // BASE_PAGE, dtype=np.uint8)
    if _libc().mincore(span[0], span[1] - span[0], flags.ctypes.data) != 0:
        flags[:] = 0  # unknown: treated as holes, left alone
    return flags


@contextmanager
def huge_pages_for_new_memory(enabled: bool = True) -> Iterator[HugePages]:
    """Collapse the memory the ``with`` block writes into huge pages when it ends (see the module docstring).

    Yields the report, filled in when the block exits normally; a block that raises leaves it empty. Failures
    to collapse are reported, never raised: the memory stays as it was, in 4 KiB pages.
    """
    report = HugePages()
    reason = "" if enabled else "runtime.huge_pages=false"
    reason = reason or unavailable_reason()
    if not reason:
        release_freed_heap()
        full_before = wholly_resident(anonymous_mappings(), _resident_pages)
    yield report
    if reason:
        report.unavailable = reason
        if enabled:
            log.warning("%s", report.describe())
        return
    started = time.perf_counter()
    for lo, hi in loaded_runs(full_before, anonymous_mappings(), _resident_pages):
        report.candidate_bytes += hi - lo
        for advice in (MADV_HUGEPAGE, MADV_COLLAPSE):
            if _libc().madvise(lo, hi - lo, advice) != 0:
                name = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
                report.failures[name] = report.failures.get(name, 0) + hi - lo
                break
        else:
            report.collapsed_bytes += hi - lo
    report.seconds = time.perf_counter() - started
    log.info("%s", report.describe())
