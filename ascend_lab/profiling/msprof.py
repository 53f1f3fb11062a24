"""Parser for CANN's profiling summaries (msprof's CSV files), from the pyACL profiling API or torch_npu's profiler.

Two producers write the same kind of table under different names (CANN profiling docs, "op_summary" and
"api_statistic" pages, atlasprofiling_16_0067 / _0063; torch_npu: "Ascend PyTorch Profiler" kernel_details.csv):

- the pyACL profiling API (``acl.prof.*``) leaves ``PROF_<n>_<timestamp>_<id>/`` under the path given to
  ``acl.prof.init``; ``msprof --export=on --output=<that folder>`` parses it into
  ``mindstudio_profiler_output/op_summary_<ts>.csv`` (one row per operator task: ``OP Type``, ``Task Type``,
  ``Task Start Time(us)``, ``Task Duration(us)``, ``Task Wait Time(us)``), ``op_statistic_<ts>.csv``,
  ``api_statistic_<ts>.csv`` (per API: ``Level``, ``API Name``, ``Time(us)``, ``Count``, ``Avg(us)``, ...) and
  the ``msprof_<ts>.json`` timeline (Chrome trace; Perfetto and MindStudio Insight open it);
- torch_npu's profiler writes ``*_ascend_pt/ASCEND_PROFILER_OUTPUT/kernel_details.csv`` with ``Type``,
  ``Accelerator Core``, ``Start Time(us)``, ``Duration(us)``, ``Wait Time(us)``.

Rows are operator tasks on the AI Core / AI CPU (compute) and memory-copy tasks (a task or API whose type names
``MEMCPY``: copies). pyACL's synchronous ``aclrtMemcpy`` calls appear in ``api_statistic`` as totals without
timestamps (all directions together: the pyACL runtime's per-step device-to-device cache update counts too).
Cells are read stripped of surrounding whitespace.
"""

from __future__ import annotations

import csv
import math
import subprocess
from pathlib import Path
from typing import Callable

from ascend_lab.errors import ToolchainError
from ascend_lab.profiling.events import COMPUTE, COPY, UNMARKED, OpEvent, ParsedTrace, TraceFile

# (type, task type, start, duration) column names of the two producers.
OP_SUMMARY_COLUMNS = ("OP Type", "Task Type", "Task Start Time(us)", "Task Duration(us)")
KERNEL_DETAILS_COLUMNS = ("Type", "Accelerator Core", "Start Time(us)", "Duration(us)")
COPY_MARK = "MEMCPY"
EXPORT_TIMEOUT_S = 1800.0  # msprof parses every raw file of the session; large sessions take minutes


def find_tables(root: Path) -> tuple[list[Path], list[Path]]:
    """(operator tables, API statistics) under ``root``: op_summary_*.csv or kernel_details.csv, and
    api_statistic*.csv."""
    ops = sorted(root.rglob("op_summary_*.csv")) or sorted(root.rglob("kernel_details.csv"))
    apis = sorted(root.rglob("api_statistic*.csv"))
    return ops, apis


def raw_sessions(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("PROF_*") if p.is_dir())


def parse(trace: TraceFile, exporter: Callable[[Path], None] | None = None) -> ParsedTrace:
    """The operator and copy tasks under ``trace.path``; raw sessions are exported first with ``exporter``."""
    root = Path(trace.path)
    ops, apis = find_tables(root)
    notes = []
    if not ops and raw_sessions(root):
        if exporter is None:
            return ParsedTrace([], [f"{root} holds raw profiling data only; parse it with `msprof --export=on "
                                    f"--output=<PROF_* folder>` (profile.msprof_export=true does it)"])
        for session in raw_sessions(root):
            exporter(session)
        ops, apis = find_tables(root)
    if not ops:
        return ParsedTrace([], notes + [f"no op_summary_*.csv or kernel_details.csv under {root}"])
    phase = trace.phase or UNMARKED
    events = [event for path in ops for event in _operator_rows(path, phase)]
    events += [event for path in apis for event in _copy_calls(path, phase)]
    return ParsedTrace(events, notes)


def _number(text: str | None) -> float:
    try:
        return float(str(text).strip())
    except (TypeError, ValueError):
        return math.nan


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]


def _operator_rows(path: Path, phase: str) -> list[OpEvent]:
    rows = _read(path)
    if not rows:
        return []
    columns = OP_SUMMARY_COLUMNS if OP_SUMMARY_COLUMNS[0] in rows[0] else KERNEL_DETAILS_COLUMNS
    type_col, task_col, start_col, dur_col = columns
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise ToolchainError(f"{path}: columns {missing} missing; is this an msprof op_summary / torch_npu "
                             f"kernel_details table? (columns: {list(rows[0])})")
    out = []
    for row in rows:
        duration = _number(row[dur_col])
        if math.isnan(duration):
            continue
        op = row[type_col] or "N/A"
        copy = COPY_MARK in op.upper() or COPY_MARK in row[task_col].upper()
        out.append(OpEvent(op, COPY if copy else COMPUTE, _number(row[start_col]), duration, phase))
    return out


def _copy_calls(path: Path, phase: str) -> list[OpEvent]:
    """One event per memory-copy API call (its average time; these rows carry no timestamps)."""
    out = []
    for row in _read(path):
        name = row.get("API Name", "")
        if COPY_MARK not in name.upper():
            continue
        count, average = int(_number(row.get("Count")) or 0), _number(row.get("Avg(us)"))
        out += [OpEvent(name, COPY, math.nan, average, phase)] * count
    return out


def exporter_for(toolkit_home: str | None) -> Callable[[Path], None]:
    """``msprof --export=on --output=<session>`` in CANN's environment (CANN profiling docs, "Exporting
    Profile Data": it parses a session first when needed)."""
    from ascend_lab.cann import toolkit

    def export(session: Path) -> None:
        environment = toolkit.load_environment("msprof", toolkit_home)
        if environment.path is None:
            raise ToolchainError(toolkit.missing_toolkit_message(
                f"msprof (parsing the pyACL profile in {session}; or set profile.msprof_export=false)", toolkit_home))
        proc = subprocess.run([str(environment.path), "--export=on", f"--output={session}"], capture_output=True,
                              text=True, env=environment.env, timeout=EXPORT_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-10:]
            raise ToolchainError(f"`msprof --export=on --output={session}` failed (exit status {proc.returncode}):\n"
                                 + "\n".join(tail))

    return export
