"""The profiled pass: run the workload once more under the runtime's profiler, then turn its traces into the table.

It runs after the timed pass and apart from it (the timed figures are final before it starts, so a profiler never
inflates them), without warm-up, through the runtime's one hook, :meth:`Runtime.profiled
<ascend_lab.runtimes.base.Runtime.profiled>`: the hook yields the runtime the pass runs on (onnxruntime profiles on
a separate session), a ``phase(name)`` marker, and afterwards the traces it wrote. A generation is marked as its
``prefill`` and its ``decode`` steps, forward passes as ``forward``.

The pass's own latency is logged under ``profile_*`` names (``profile_prefill_ms_mean``, ``profile_tpot_ms_mean``,
``profile_forward_ms_mean``): what the workload took *while profiled*, never mixed with the timed figures.

Everything lands in the job's ``profile/`` folder and the run's ``profile/`` artifacts: the raw traces,
``ops.csv``, ``ops.png`` (the top operators) and ``ops.txt`` (the console table).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ascend_lab.config.profile import ProfileConfig
from ascend_lab.profiling import msprof
from ascend_lab.profiling.events import DECODE, FORWARD, PREFILL, OpEvent, TraceFile
from ascend_lab.profiling.table import METRIC_PREFIX, OpTable
from ascend_lab.stats import summarize

log = logging.getLogger(__name__)

PROFILE_FOLDER = "profile"  # in the job's output folder, and the run's artifact folder (the name)
TABLE_FILE, CHART_FILE, CONSOLE_FILE = "ops.csv", "ops.png", "ops.txt"
RAW_FOLDER = "traces"  # the runtime's own trace files, as its profiler wrote them
# The profiled pass's latency, per phase: (metric stem, phase).
LATENCY_NAMES = {PREFILL: "prefill_ms", DECODE: "tpot_ms", FORWARD: "forward_ms"}


@dataclass
class ProfileReport:
    out_dir: Path
    traces: list[TraceFile]
    table: OpTable | None
    latency: dict[str, float]  # profile_<stem>_mean/p50/... of the profiled pass
    notes: list[str] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return {**(self.table.metrics() if self.table is not None else {}), **self.latency}

    def console(self, top_n: int, title: str) -> str:
        lines = [self.table.console(top_n, title)] if self.table is not None else [f"{title}: no operators parsed"]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"traces: {', '.join(str(t.path) for t in self.traces)} (README: opening them in Perfetto / "
                     "TensorBoard)")
        return "\n".join(lines)

    def log(self, tracker, top_n: int, title: str) -> str:
        """Write ops.csv, ops.png and ops.txt beside the traces, log the folder as ``profile/`` and the metrics;
        returns the console text."""
        text = self.console(top_n, title)
        if self.table is not None:
            (self.out_dir / TABLE_FILE).write_text(self.table.csv_text(), encoding="utf-8")
            self.table.chart(top_n, title, self.out_dir / CHART_FILE)
        (self.out_dir / CONSOLE_FILE).write_text(text + "\n", encoding="utf-8")
        tracker.log_artifact(self.out_dir, PROFILE_FOLDER)
        tracker.log_metrics(self.metrics)
        tags = {"profile.traces": ", ".join(f"{t.format}:{Path(t.path).name}" for t in self.traces)}
        if self.table is not None and self.table.rows:
            tags["profile.top_op"] = self.table.rows[0].op
        if self.notes:
            tags["profile.notes"] = "; ".join(self.notes)[:5000]
        tracker.set_tags(tags)
        return text


class _Latency:
    """Host-clock time of each profiled step, by phase (the runtime's timer: synchronised where needed)."""

    def __init__(self, timer: Callable) -> None:
        self.timer = timer
        self.samples: dict[str, list[float]] = defaultdict(list)

    def time(self, phase: str, fn: Callable[[], object]) -> None:
        with self.timer() as t:
            fn()
        self.samples[phase].append(t.elapsed_ms)

    def metrics(self) -> dict[str, float]:
        out = {}
        for phase, values in self.samples.items():
            out.update(summarize(values).as_metrics(METRIC_PREFIX + LATENCY_NAMES[phase], ("mean", "p50", "p99")))
        return out


def profile_generate(runtime, engine, make_engine: Callable, settings: ProfileConfig, out_dir: Path,
                     input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int, timer,
                     toolkit_home: str | None = None) -> ProfileReport:
    """``settings.steps`` generations under the profiler: each prefill in phase ``prefill``, its decode steps (the
    first ``settings.decode_steps``, else all ``new_tokens - 1``) in phase ``decode``. ``engine`` is the timed
    pass's; a profiler that runs on its own runtime gets ``make_engine(that runtime)``."""
    batch, prompt_len = input_ids.shape
    steps = max(new_tokens - 1, 0) if settings.decode_steps is None else min(settings.decode_steps, new_tokens - 1)
    latency = _Latency(timer)

    def work(session) -> None:
        active = engine if session.runtime is runtime else make_engine(session.runtime)
        active.prepare(batch, prompt_len, new_tokens)  # buffers and compilation stay outside the phases
        for _ in range(settings.steps):
            with session.phase(PREFILL):
                latency.time(PREFILL, lambda: active.prefill(input_ids, attention_mask))
            if steps:
                with session.phase(DECODE):
                    for _ in range(steps):
                        latency.time(DECODE, active.step)

    return _profile(runtime, settings, out_dir, work, latency, toolkit_home)


def profile_forward(runtime, fn: Callable[[], object], make_fn: Callable, settings: ProfileConfig, out_dir: Path,
                    timer, toolkit_home: str | None = None) -> ProfileReport:
    """``settings.steps`` forward passes in phase ``forward``; ``fn`` is the timed pass's, ``make_fn(runtime)``
    builds one on a profiler's own runtime."""
    latency = _Latency(timer)

    def work(session) -> None:
        active = fn if session.runtime is runtime else make_fn(session.runtime)
        with session.phase(FORWARD):
            for _ in range(settings.steps):
                latency.time(FORWARD, active)

    return _profile(runtime, settings, out_dir, work, latency, toolkit_home)


def _profile(runtime, settings: ProfileConfig, out_dir: Path, work: Callable, latency: _Latency,
             toolkit_home: str | None) -> ProfileReport:
    out_dir = Path(out_dir).resolve()
    raw = out_dir / RAW_FOLDER
    raw.mkdir(parents=True, exist_ok=True)
    with runtime.profiled(raw, settings) as session:
        work(session)
    traces = list(session.traces)
    events, notes = parse_traces(traces, msprof.exporter_for(toolkit_home) if settings.msprof_export else None)
    table = OpTable.from_events(events) if events else None
    if table is None:
        notes.append("the traces held no operator events")
    return ProfileReport(out_dir, traces, table, latency.metrics(), notes)


def parse_traces(traces: list[TraceFile], exporter=None) -> tuple[list[OpEvent], list[str]]:
    """Every trace through the parser its profiler named (:attr:`TraceFile.parser`)."""
    events: list[OpEvent] = []
    notes: list[str] = []
    for trace in traces:
        if trace.parser is None:
            raise ValueError(f"trace {trace.path} ({trace.format}) names no parser")
        parsed = trace.parser(trace, exporter)
        events += parsed.events
        notes += [n for n in parsed.notes if n not in notes]
    return events, notes
