"""Parser for onnxruntime's built-in profile (``SessionOptions.enable_profiling``; the JSON file
``InferenceSession.end_profiling()`` returns, named ``<profile_file_prefix>_<date>.json``).

Format (onnxruntime's profiler; a Chrome trace that Perfetto and chrome://tracing open): a JSON list of complete
events (``"ph": "X"``) with ``ts`` / ``dur`` in µs from the profiler's start:

- ``cat: "Node"``, ``name: "<node>_kernel_time"``: one node's kernel, ``args.op_name`` its operator type and
  ``args.provider`` the execution provider that ran it; ``MemcpyToHost`` / ``MemcpyFromHost`` nodes are the
  copies onnxruntime inserts between a device provider and the CPU;
- ``cat: "Session"``, ``name: "model_run"``: one ``run()``, which holds its nodes.

Phases: onnxruntime marks none, so the profiled pass records them on the host's wall clock
(:class:`~ascend_lab.profiling.events.WallClockPhases`), and ``InferenceSession.get_profiling_start_time_ns()``
places the trace on that clock (both are the system clock); each run takes the phase its middle falls in,
and its nodes take the run's.
"""

from __future__ import annotations

import json
from pathlib import Path

from ascend_lab.profiling.events import COMPUTE, COPY, UNMARKED, OpEvent, ParsedTrace, TraceFile, phase_at

COPY_OPS = ("MemcpyToHost", "MemcpyFromHost")
NODE_SUFFIX = "_kernel_time"


def load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def parse(trace: TraceFile, exporter=None) -> ParsedTrace:
    """The trace's operator events (``exporter``: unused, the file is parsed as written)."""
    events = [e for e in load(trace.path) if e.get("ph") == "X" and "dur" in e]
    runs = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    run_phases = [_run_phase(trace, start, end) for start, end in runs]
    out, notes = [], []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(NODE_SUFFIX):
            continue
        op = e.get("args", {}).get("op_name") or e["name"][:-len(NODE_SUFFIX)]
        ts = float(e["ts"])
        phase = trace.phase or next((p for (s, end), p in zip(runs, run_phases) if s <= ts <= end), UNMARKED)
        out.append(OpEvent(op, COPY if op in COPY_OPS else COMPUTE, ts, float(e["dur"]), phase))
    if any(e.phase == UNMARKED for e in out):
        notes.append("some onnxruntime runs fall outside the marked phases (counted as 'unmarked')")
    return ParsedTrace(out, notes)


def _run_phase(trace: TraceFile, start_us: float, end_us: float) -> str:
    if trace.phase is not None:
        return trace.phase
    if trace.origin_ns is None or not trace.marks:
        return UNMARKED
    return phase_at(trace.marks, trace.origin_ns + (start_us + end_us) / 2 * 1e3)
