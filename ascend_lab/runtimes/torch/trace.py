"""Parser for the Chrome trace ``torch.profiler`` exports (``export_chrome_trace``; the ``*.pt.trace.json`` that
TensorBoard's profiler plugin and Perfetto open).

Format (PyTorch's Kineto exporter): ``{"traceEvents": [...]}`` of complete events (``"ph": "X"``) with ``ts``
and ``dur`` in µs and a ``cat``:

- ``cpu_op``: an ATen operator on a host thread; operators nest (``aten::linear`` → ``aten::addmm``), so an
  operator's own time is its duration minus its children's (*self time*), which sums to the busy time once;
- ``user_annotation``: a ``record_function`` range on the host (the phases, named ``ascend_lab.<phase>``), and
  ``gpu_user_annotation``: the same range on the GPU timeline;
- ``kernel``, ``gpu_memcpy``, ``gpu_memset``: device work (CUDA), each with ``args.correlation`` naming the host
  launch (``cuda_runtime`` / ``cuda_driver`` events with the same correlation id).

On a GPU the table is the device work: a kernel is attributed to the ATen operator that launched it (the
innermost ``cpu_op`` around its launch), falling back to the kernel's own name (a CUDA-graph replay launches
kernels outside any operator); ``Memcpy HtoD`` / ``DtoH`` are host↔device copies, ``DtoD`` is device work. On
the CPU the "device" is the host: the table is the operators' self time, with no copies.
"""

from __future__ import annotations

import gzip
import json
from bisect import bisect_right
from collections import defaultdict
from pathlib import Path

from ascend_lab.profiling.events import (COMPUTE, COPY, RANGE_PREFIX, UNMARKED, OpEvent, ParsedTrace, TraceFile)

DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
HOST_RANGES, DEVICE_RANGES = "user_annotation", "gpu_user_annotation"
# Where a kernel name is used as the operator type, longer names are cut (templated kernel names run to
# hundreds of characters).
MAX_OP_NAME = 80


def load(path: Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        data = json.load(handle)
    return data["traceEvents"] if isinstance(data, dict) else data


def parse(trace: TraceFile, exporter=None) -> ParsedTrace:
    """The trace's operator events (``exporter``: unused, the file is parsed as written)."""
    events = [e for e in load(trace.path) if e.get("ph") == "X" and "dur" in e]
    host_ranges = _ranges(events, HOST_RANGES)
    device = [e for e in events if e.get("cat") in DEVICE_CATEGORIES]
    if device:
        return ParsedTrace(_device_events(events, device, host_ranges, _ranges(events, DEVICE_RANGES), trace.phase))
    return ParsedTrace(_host_events(events, host_ranges, trace.phase),
                       ["CPU: the operators' self time on the host; no host↔device copies exist"])


def _ranges(events: list[dict], category: str) -> list[tuple[float, float, str]]:
    return sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"]), e["name"][len(RANGE_PREFIX):])
                  for e in events if e.get("cat") == category and str(e.get("name", "")).startswith(RANGE_PREFIX))


def _phase(ranges: list[tuple[float, float, str]], ts: float, fixed: str | None) -> str:
    if fixed is not None:
        return fixed
    for start, end, name in ranges:
        if start <= ts <= end:
            return name
    return UNMARKED


def _host_events(events: list[dict], ranges, fixed: str | None) -> list[OpEvent]:
    """cpu_op events with their self time (duration minus nested operators' durations), per thread."""
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    out = []
    for ops in by_thread.values():
        ops.sort(key=lambda e: (float(e["ts"]), -float(e["dur"])))
        children: dict[int, float] = defaultdict(float)
        stack: list[tuple[int, float]] = []  # (index, end)
        for i, e in enumerate(ops):
            start, end = float(e["ts"]), float(e["ts"]) + float(e["dur"])
            while stack and stack[-1][1] <= start:
                stack.pop()
            if stack:
                children[stack[-1][0]] += float(e["dur"])
            stack.append((i, end))
        for i, e in enumerate(ops):
            self_us = max(float(e["dur"]) - children[i], 0.0)
            out.append(OpEvent(e["name"], COMPUTE, float(e["ts"]), self_us, _phase(ranges, float(e["ts"]), fixed),
                               wall_us=float(e["dur"])))
    return out


def _device_events(events: list[dict], device: list[dict], host_ranges, device_ranges,
                   fixed: str | None) -> list[OpEvent]:
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
    ops_by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            ops_by_thread[(e.get("pid"), e.get("tid"))].append(e)
    starts = {}
    for key, ops in ops_by_thread.items():
        ops.sort(key=lambda e: float(e["ts"]))
        starts[key] = [float(e["ts"]) for e in ops]
    out = []
    for e in device:
        launch = launches.get(e.get("args", {}).get("correlation"))
        op = _launching_op(launch, ops_by_thread, starts) if launch else None
        kind, name = _classify(e)
        ts = float(e["ts"])
        phase = _phase(device_ranges, ts, fixed)
        if phase == UNMARKED and launch is not None:
            phase = _phase(host_ranges, float(launch["ts"]), fixed)
        out.append(OpEvent(name if kind == COPY or op is None else op, kind, ts, float(e["dur"]), phase))
    return out


def _classify(event: dict) -> tuple[str, str]:
    name = str(event.get("name", ""))
    if event.get("cat") == "gpu_memcpy":
        direction = next((d for d in ("HtoD", "DtoH", "DtoD", "HtoH", "PtoP") if d in name), "")
        return (COMPUTE if direction in ("DtoD", "PtoP") else COPY), f"Memcpy {direction}".strip()
    return COMPUTE, name[:MAX_OP_NAME]


def _launching_op(launch: dict, ops_by_thread, starts) -> str | None:
    """The innermost cpu_op on the launch's thread whose interval holds the launch."""
    key = (launch.get("pid"), launch.get("tid"))
    ops = ops_by_thread.get(key)
    if not ops:
        return None
    ts = float(launch["ts"])
    best = None
    for e in ops[:bisect_right(starts[key], ts)]:
        if float(e["ts"]) + float(e["dur"]) >= ts and (best is None or float(e["ts"]) >= float(best["ts"])):
            best = e
    return best["name"] if best else None
