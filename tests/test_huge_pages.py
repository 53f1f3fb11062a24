"""runtime.huge_pages: the memory a load maps is moved to 2 MiB transparent huge pages (ascend_lab.huge_pages).

The kernel is the judge: the tests read /proc/self/smaps, where the kernel reports each mapping's
``AnonHugePages`` (Documentation/filesystems/proc.rst), not the report the code writes about itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ascend_lab import huge_pages
from ascend_lab.huge_pages import HUGE_PAGE, huge_pages_for_new_memory, loaded_spans, resident_runs, unavailable_reason

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


def test_loaded_spans_are_the_mappings_the_load_wrote_in_whole_huge_pages():
    h = HUGE_PAGE
    before = {(0, 4 * h): 4 * h, (20 * h, 21 * h): h, (50 * h, 60 * h): h}
    after = {(0, 10 * h + 5): 10 * h,  # grew: whole (the new part is the weights, the rest is cheap to re-check)
             (20 * h, 21 * h): h,  # unchanged
             (30 * h + 1, 33 * h): 3 * h,  # new, unaligned: trimmed inward
             (40 * h, 40 * h + h // 2): h // 2,  # new, smaller than a huge page: holds none
             (50 * h, 60 * h): 5 * h}  # the same mapping, 4 huge pages more resident: malloc's heap reused
    assert loaded_spans(before, after) == [(0, 10 * h), (31 * h, 33 * h), (50 * h, 60 * h)]
    assert loaded_spans(after, after) == []


def test_only_wholly_resident_huge_pages_are_collapsed():
    pages = HUGE_PAGE // 4096
    flags = np.ones(5 * pages, dtype=np.uint8)
    flags[pages + 7] = 0  # a hole in the second huge page
    flags[4 * pages:] = 0  # the fifth never touched
    span = (10 * HUGE_PAGE, 15 * HUGE_PAGE)
    assert resident_runs(span, lambda s: flags) == [(10 * HUGE_PAGE, 11 * HUGE_PAGE), (12 * HUGE_PAGE, 14 * HUGE_PAGE)]


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
