"""The one event format every trace parser produces, and what a runtime's profiling hook hands back.

A runtime profiles in its own way and writes its own trace format; each parser (the runtime's own,
``ascend_lab/runtimes/<name>/trace.py``, or :mod:`~ascend_lab.profiling.msprof` for CANN's tables, which
torch_npu and pyACL both write) turns one format into :class:`OpEvent` rows: an operator type, whether it
computes or copies between host and device, when it started and how long it took, and the phase of the
profiled pass it belongs to (``prefill``, ``decode``, ``forward``). Everything downstream
(:mod:`~ascend_lab.profiling.table`) works on these rows only, so the runtimes compare side by side.

Phases reach a trace in one of three ways, whichever the runtime's profiler supports:

- marked inside the trace (torch: ``record_function`` ranges named :func:`range_name`);
- as wall-clock intervals recorded on the host (:class:`WallClockPhases`) that the parser matches against
  the trace's own clock (onnxruntime: its profiling start time is on the same clock);
- one trace per phase (pyACL: a profiling session per phase, :attr:`TraceFile.phase`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

COMPUTE, COPY = "compute", "copy"
# The phases a profiled pass marks: a generation's prompt and its decode steps, or forward passes.
PREFILL, DECODE, FORWARD = "prefill", "decode", "forward"
# Events the trace could not place in any marked phase (e.g. a stray run outside the marks).
UNMARKED = "unmarked"
# Trace formats (each TraceFile carries its format's parser).
TORCH, ONNXRUNTIME, MSPROF = "torch", "onnxruntime", "msprof"
FORMATS = (TORCH, ONNXRUNTIME, MSPROF)
# Prefix of the record_function ranges that mark phases inside a torch trace.
RANGE_PREFIX = "ascend_lab."


def range_name(phase: str) -> str:
    """The name a phase's range carries inside a trace (``ascend_lab.decode``)."""
    return RANGE_PREFIX + phase


@dataclass(frozen=True)
class OpEvent:
    """One operator execution (or copy) on the device the runtime computes on."""

    op: str  # operator type (MatMul, aten::mm, ...), or the copy's kind (Memcpy HtoD, aclrtMemcpy, ...)
    kind: str  # COMPUTE or COPY
    start_us: float  # on the trace's clock; NaN where the format gives totals only (placed in no interval)
    dur_us: float  # the time this operator itself took (its self time where operators nest)
    phase: str
    wall_us: float | None = None  # where operators nest (torch on the CPU): its whole interval, children included

    @property
    def end_us(self) -> float:
        return self.start_us + (self.dur_us if self.wall_us is None else self.wall_us)


@dataclass(frozen=True)
class PhaseMark:
    name: str
    start_ns: int  # time.time_ns() on the host
    end_ns: int


@dataclass
class TraceFile:
    """A trace a runtime's profiler wrote: a file or a folder, in one of :data:`FORMATS`."""

    path: Path
    format: str
    phase: str | None = None  # the one phase this trace covers; None: phases are marked inside or in `marks`
    marks: tuple[PhaseMark, ...] = ()  # host wall-clock phase intervals (formats without ranges of their own)
    origin_ns: int | None = None  # the trace clock's zero on the host wall clock (time.time_ns), where known
    # The format's parser, set by the profiler that wrote the trace (profiling imports no runtime):
    # parser(trace, exporter) → ParsedTrace; ``exporter`` turns raw sessions into tables where the format has them
    # (msprof), other parsers ignore it.
    parser: Optional[Callable[["TraceFile", Optional[Callable[[Path], None]]], "ParsedTrace"]] = None


@dataclass
class ParsedTrace:
    events: list[OpEvent] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class WallClockPhases:
    """Phase intervals on the host's wall clock, for profilers whose trace has no ranges of its own."""

    def __init__(self) -> None:
        self.marks: list[PhaseMark] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.time_ns()
        try:
            yield
        finally:
            self.marks.append(PhaseMark(name, start, time.time_ns()))


class WallClockSession:
    """A profile session (:class:`ascend_lab.runtimes.base.ProfileSession`) for profilers without ranges of their
    own: the pass runs on ``runtime`` and its phases are recorded on the host's wall clock."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.traces: list[TraceFile] = []
        self.clock = WallClockPhases()

    def phase(self, name: str):
        return self.clock.phase(name)


def phase_at(marks: Iterable[PhaseMark], when_ns: float) -> str:
    """The phase whose interval holds ``when_ns`` (host wall clock), else :data:`UNMARKED`."""
    for mark in marks:
        if mark.start_ns <= when_ns <= mark.end_ns:
            return mark.name
    return UNMARKED


def busy_and_span(events: Iterable[OpEvent]) -> tuple[float, float, float]:
    """(µs covered by the union of the events' intervals, µs from the first start to the last end, µs of
    events without a start time). The union, not the sum: overlapping device work (two streams, nested
    ops) is busy time once."""
    timed = sorted((e.start_us, e.end_us) for e in events if not math.isnan(e.start_us))
    untimed = sum(e.dur_us for e in events if math.isnan(e.start_us))
    if not timed:
        return 0.0, 0.0, untimed
    busy, (cur_start, cur_end) = 0.0, timed[0]
    for start, end in timed[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    busy += cur_end - cur_start
    return busy, max(end for _, end in timed) - timed[0][0], untimed
