"""runtime.huge_pages: the memory a load maps is moved to 2 MiB transparent huge pages (ascend_lab.huge_pages).

The kernel is the judge: the tests read /proc/self/smaps, where the kernel reports each mapping's
``AnonHugePages`` (Documentation/filesystems/proc.rst), not the report the code writes about itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ascend_lab import huge_pages
from ascend_lab.huge_pages import (BASE_PAGE, HUGE_PAGE, Span, full_huge_pages, huge_pages_for_new_memory, loaded_runs,
                                   unavailable_reason, wholly_resident)

MB = 1 << 20


def kernel_collapses() -> str:
    """Why this host cannot collapse pages on request ('' where it can): MADV_COLLAPSE is Linux 6.1."""
    reason = unavailable_reason()
    if reason:
        return reason
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    return "" if (major, minor) >= (6, 1) else f"kernel {os.uname().release} has no MADV_COLLAPSE (Linux ≥ 6.1)"


def huge_bytes_of(array: np.ndarray) -> int:
    """``AnonHugePages`` of the mappings ``array``'s memory lies in, as the kernel reports them (advising part of a
    mapping splits it, so an array can span several)."""
    lo, hi = array.ctypes.data, array.ctypes.data + array.nbytes
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0] if line.split() else ""
        if "-" in first and ":" not in first:
            start, end = (int(x, 16) for x in first.split("-"))
            inside = start < hi and lo < end
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1]) * 1024
    return total


@pytest.fixture
def small_pages_numpy():
    """numpy advises its own large arrays into huge pages (numpy/_core/src/multiarray/alloc.c); switched off
    here so an array starts in 4 KiB pages, as onnxruntime's and torch's allocations do."""
    from numpy._core.multiarray import _set_madvise_hugepage

    previous = _set_madvise_hugepage(False)
    yield
    _set_madvise_hugepage(previous)


def fake_residency(resident: list[Span]):
    """``mincore`` stand-in: base pages inside the ``resident`` spans are resident, all others not."""
    def flags(span: Span) -> np.ndarray:
        addresses = np.arange(span[0], span[1], BASE_PAGE)
        return np.any([(addresses >= lo) & (addresses < hi) for lo, hi in resident] or [addresses < 0], axis=0
                      ).astype(np.uint8)
    return flags


def test_the_load_is_the_huge_pages_wholly_resident_now_and_not_before():
    h = HUGE_PAGE
    full_before = wholly_resident([(0, 4 * h + 5), (20 * h, 21 * h)], fake_residency([(0, 4 * h), (20 * h, 21 * h)]))
    assert full_before == {0, h, 2 * h, 3 * h, 20 * h}
    after = [(0, 10 * h + 5),  # grew: only its new part is the load's
             (20 * h, 21 * h),  # unchanged
             (30 * h + 1, 33 * h),  # new, unaligned: trimmed inward
             (40 * h, 40 * h + h // 2)]  # new, smaller than a huge page: holds none
    now = fake_residency([(0, 10 * h), (20 * h, 21 * h), (30 * h, 33 * h), (40 * h, 40 * h + h // 2)])
    assert loaded_runs(full_before, after, now) == [(4 * h, 10 * h), (31 * h, 33 * h)]
    assert loaded_runs(wholly_resident(after, now), after, now) == []


def test_memory_written_earlier_is_not_the_loads_when_the_kernel_merges_its_mapping_with_the_loads():
    """Adjacent anonymous mappings with the same flags become one (mm/vma.c): the mapping the load wrote can start
    below, and end where, memory written before it does. Seen in CI: a 32 MB array written before the block was
    collapsed with the smaps read buffer mapped beside it."""
    h = HUGE_PAGE
    full_before = wholly_resident([(10 * h, 26 * h)], fake_residency([(10 * h, 26 * h)]))
    assert loaded_runs(full_before, [(6 * h, 26 * h)], fake_residency([(6 * h, 26 * h)])) == [(6 * h, 10 * h)]


HEAP_REUSE = """
import ctypes, json
import numpy as np
from ascend_lab.huge_pages import huge_pages_for_new_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 64 MB blocks from the heap, not their own mmap
libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free() keeps the heap's memory, as it does for smaller blocks
size = 64 << 20
freed = libc.malloc(size)
guard = libc.malloc(4096)  # keeps the freed block off the heap's top
ctypes.memset(freed, 1, size)
libc.free(freed)
with huge_pages_for_new_memory() as report:
    weights = libc.malloc(size)  # glibc hands back the freed block, resident already
    ctypes.memset(weights, 2, size)
print(json.dumps({"reused": weights == freed, "collapsed": report.collapsed_bytes, "said": report.describe()}))
"""


def test_weights_written_into_freed_heap_memory_are_the_loads():
    """glibc reuses freed heap memory (an export in the same process frees gigabytes before the load): the freed
    memory is handed back to the kernel first, so the load's writes make it resident again and are seen. In a
    fresh interpreter, since it changes malloc's thresholds."""
    if kernel_collapses():
        pytest.skip(kernel_collapses())
    proc = subprocess.run([sys.executable, "-c", HEAP_REUSE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["reused"], "glibc did not reuse the freed block: the scenario did not happen"
    assert result["collapsed"] >= 60 * MB, result["said"]


def test_only_wholly_resident_huge_pages_are_collapsed():
    pages = HUGE_PAGE // BASE_PAGE
    flags = np.ones(5 * pages, dtype=np.uint8)
    flags[pages + 7] = 0  # a hole in the second huge page
    flags[4 * pages:] = 0  # the fifth never touched
    span = (10 * HUGE_PAGE, 15 * HUGE_PAGE)
    assert full_huge_pages(span, lambda s: flags) == [10 * HUGE_PAGE, 12 * HUGE_PAGE, 13 * HUGE_PAGE]


def test_memory_mapped_in_the_block_ends_in_huge_pages(small_pages_numpy):
    reason = kernel_collapses()
    if reason:
        pytest.skip(reason)
    with huge_pages_for_new_memory() as report:
        weights = np.arange(64 * MB // 4, dtype=np.float32)  # 64 MB, written: every page resident
        assert huge_bytes_of(weights) == 0  # 4 KiB pages until the block ends
    assert not report.unavailable and report.collapsed_bytes >= 60 * MB, report.describe()
    assert huge_bytes_of(weights) >= 60 * MB
    np.testing.assert_array_equal(weights[:5], [0, 1, 2, 3, 4])  # same contents, other page size
    assert weights[-1] == 64 * MB // 4 - 1
    assert report.metrics()["huge_page_gb"] == pytest.approx(report.collapsed_bytes / 1e9)
    assert "moved to 2 MiB pages" in report.describe()


def test_memory_the_block_does_not_write_is_left_alone(small_pages_numpy):
    if kernel_collapses():
        pytest.skip(kernel_collapses())
    earlier = np.ones(32 * MB // 4, dtype=np.float32)
    with huge_pages_for_new_memory() as report:
        earlier[:1024] += 1  # read and written, but its mapping neither grows nor gains resident pages
    assert huge_bytes_of(earlier) == 0, report.describe()


def test_memory_written_beside_earlier_memory_moves_without_it(small_pages_numpy):
    """The merge case on the real kernel: an array mapped in the block lands next to one mapped before it and the
    kernel makes them one mapping; only the new array's huge pages move."""
    if kernel_collapses():
        pytest.skip(kernel_collapses())
    earlier = np.ones(32 * MB // 4, dtype=np.float32)
    with huge_pages_for_new_memory() as report:
        beside = np.ones(16 * MB // 4, dtype=np.float32)
    # the huge page where the two meet (below the earlier array or, where a gap was there, above it) was not wholly
    # resident before and is now: it moves, with up to 2 MiB of the earlier array; the rest stays in 4 KiB pages
    edge = HUGE_PAGE // earlier.itemsize
    assert huge_bytes_of(earlier[edge:-edge]) == 0, report.describe()
    assert huge_bytes_of(beside) >= 12 * MB, report.describe()
    assert report.collapsed_bytes <= 16 * MB + HUGE_PAGE, report.describe()


def test_switched_off_it_touches_nothing_and_says_so(small_pages_numpy):
    with huge_pages_for_new_memory(enabled=False) as report:
        weights = np.ones(32 * MB // 4, dtype=np.float32)
    assert huge_bytes_of(weights) == 0
    assert report.collapsed_bytes == 0 and report.unavailable == "runtime.huge_pages=false"
    assert report.metrics() == {"huge_page_gb": 0.0, "huge_page_seconds": 0.0}


def test_a_host_without_transparent_huge_pages_loads_in_small_pages(monkeypatch, tmp_path, caplog):
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "THP_ENABLED", never)
    with caplog.at_level("WARNING"), huge_pages_for_new_memory() as report:
        pass
    assert report.collapsed_bytes == 0 and "'never'" in report.unavailable
    assert huge_pages.thp_mode() == "never"
    assert "huge pages: not used" in caplog.text and str(never) in caplog.text


@pytest.mark.slow
def test_a_bench_job_loads_its_weights_into_huge_pages_and_logs_it(run_cli, mlflow_runs, tmp_path):
    """Through the real CLI: onnxruntime's session memory (about 50 MB of MLP weights here) is moved at load,
    and the run's metrics say how much; runtime.huge_pages=false moves nothing."""
    model = ("model.hidden_size=256", "model.intermediate_size=8192", "benchmark.new_tokens=4",
             "benchmark.warmup=0", "benchmark.iterations=1", "benchmark.min_duration_s=0", "telemetry=off")
    for setting in ("true", "false"):
        proc = run_cli("task=bench", "runtime=onnxruntime", f"runtime.huge_pages={setting}", *model)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    _, runs = mlflow_runs(tmp_path)
    by_setting = {run.data.params["runtime.huge_pages"]: run.data.metrics for run in runs}
    assert by_setting["False"]["huge_page_gb"] == 0
    if kernel_collapses():
        pytest.skip(kernel_collapses())
    assert by_setting["True"]["huge_page_gb"] >= 0.04
    assert 0 < by_setting["True"]["huge_page_seconds"] < by_setting["True"]["load_seconds"]
