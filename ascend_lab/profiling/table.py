"""The operator table every runtime's profile becomes, its three headline shares, and how it is shown.

From :class:`~ascend_lab.profiling.events.OpEvent` rows (any runtime, any trace format):

- one row per operator type: calls, total ms, mean µs, and its *share of device time* (the time the device
  spent in operators and host↔device copies), overall and per phase (prefill / decode / forward); the
  shares of a column sum to 100 %;
- ``profile_top_op_share``: the largest row's share (how concentrated the work is);
- ``profile_copy_share``: host↔device copies' share of device time;
- ``profile_idle_share``: host gaps between device work, as a share of the profiled span (from the first
  operator's start to the last one's end, per phase): the time the device waited for the host (Python, the
  runtime's own dispatch, synchronisation);
- ``ops.csv``, a console table of the top operators, and a bar chart of them.

Shares are fractions (0–1) in metrics and percentages in the table and the csv.
"""

from __future__ import annotations

import csv
import io
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ascend_lab.profiling.events import COPY, DECODE, FORWARD, PREFILL, UNMARKED, OpEvent, busy_and_span

# Column order of the phases in tables (others, e.g. unmarked, follow).
PHASE_ORDER = (PREFILL, DECODE, FORWARD, UNMARKED)
METRIC_PREFIX = "profile_"
CHART_TITLE_WIDTH = 80  # characters per line of the chart's title (the run's description is long)


@dataclass
class OpRow:
    op: str
    kind: str
    calls: int = 0
    total_us: float = 0.0
    by_phase: dict[str, tuple[int, float]] = field(default_factory=dict)  # phase → (calls, µs)

    @property
    def mean_us(self) -> float:
        return self.total_us / self.calls if self.calls else 0.0


@dataclass
class PhaseFigures:
    device_us: float  # operators + copies
    copy_us: float
    idle_us: float  # host gaps between device work
    span_us: float  # first start to last end (+ work without timestamps)


@dataclass
class OpTable:
    rows: list[OpRow]  # largest total first
    phases: list[str]
    figures: dict[str, PhaseFigures]  # per phase

    @classmethod
    def from_events(cls, events: Sequence[OpEvent]) -> "OpTable":
        rows: dict[tuple[str, str], OpRow] = {}
        per_phase: dict[str, list[OpEvent]] = defaultdict(list)
        for event in events:
            row = rows.setdefault((event.op, event.kind), OpRow(event.op, event.kind))
            row.calls += 1
            row.total_us += event.dur_us
            calls, total = row.by_phase.get(event.phase, (0, 0.0))
            row.by_phase[event.phase] = (calls + 1, total + event.dur_us)
            per_phase[event.phase].append(event)
        phases = sorted(per_phase, key=lambda p: (PHASE_ORDER.index(p) if p in PHASE_ORDER else len(PHASE_ORDER), p))
        figures = {}
        for phase, phase_events in per_phase.items():
            busy, span, untimed = busy_and_span(phase_events)
            device = sum(e.dur_us for e in phase_events)
            copies = sum(e.dur_us for e in phase_events if e.kind == COPY)
            # Work without timestamps (totals-only copies) happened somewhere in the gaps between the timed work.
            idle = max(span - busy - untimed, 0.0)
            figures[phase] = PhaseFigures(device, copies, idle, max(span, busy + untimed))
        ordered = sorted(rows.values(), key=lambda r: (-r.total_us, r.op))
        return cls(ordered, phases, figures)

    # -- figures ---------------------------------------------------------------------------------

    @property
    def device_us(self) -> float:
        return sum(f.device_us for f in self.figures.values())

    def share(self, row: OpRow, phase: str | None = None) -> float:
        """The row's fraction of device time (overall, or within ``phase``)."""
        if phase is None:
            total = self.device_us
            return row.total_us / total if total else 0.0
        total = self.figures[phase].device_us if phase in self.figures else 0.0
        return row.by_phase.get(phase, (0, 0.0))[1] / total if total else 0.0

    def metrics(self) -> dict[str, float]:
        """``profile_top_op_share``, ``profile_copy_share``, ``profile_idle_share``, ``profile_device_ms``,
        each also per phase (``profile_decode_top_op_share``, ...)."""
        out = self._figures(None, METRIC_PREFIX)
        for phase in self.phases:
            out.update(self._figures(phase, f"{METRIC_PREFIX}{phase}_"))
        return out

    def _figures(self, phase: str | None, prefix: str) -> dict[str, float]:
        chosen = list(self.figures.values()) if phase is None else [self.figures[phase]]
        device = sum(f.device_us for f in chosen)
        span = sum(f.span_us for f in chosen)
        rows = [r for r in self.rows if phase is None or phase in r.by_phase]
        top = max((self.share(r, phase) for r in rows), default=0.0)
        return {
            f"{prefix}top_op_share": top,
            f"{prefix}copy_share": sum(f.copy_us for f in chosen) / device if device else 0.0,
            f"{prefix}idle_share": sum(f.idle_us for f in chosen) / span if span else 0.0,
            f"{prefix}device_ms": device / 1e3,
        }

    # -- forms ----------------------------------------------------------------------------------

    def csv_text(self) -> str:
        """Every operator: op type, kind, calls, total ms, mean µs, share % (overall and per phase)."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["op_type", "kind", "calls", "total_ms", "mean_us", "share_pct",
                         *(f"{p}_{c}" for p in self.phases for c in ("calls", "total_ms", "share_pct"))])
        for row in self.rows:
            per_phase = []
            for phase in self.phases:
                calls, total = row.by_phase.get(phase, (0, 0.0))
                per_phase += [calls, f"{total / 1e3:.6f}", f"{100 * self.share(row, phase):.4f}"]
            writer.writerow([row.op, row.kind, row.calls, f"{row.total_us / 1e3:.6f}", f"{row.mean_us:.3f}",
                             f"{100 * self.share(row):.4f}", *per_phase])
        return out.getvalue()

    def console(self, top_n: int, title: str) -> str:
        """The top ``top_n`` operators as an aligned table, with the three shares underneath."""
        from ascend_lab.report import format_table

        multi = len(self.phases) > 1
        headers = ["op type", "kind", "calls", "total ms", "mean µs", "share %"]
        headers += [f"{p} %" for p in self.phases] if multi else []
        cells = []
        for row in self.rows[:top_n]:
            cells.append([row.op, row.kind, row.calls, f"{row.total_us / 1e3:.3f}", f"{row.mean_us:.1f}",
                          f"{100 * self.share(row):.1f}"]
                         + ([f"{100 * self.share(row, p):.1f}" for p in self.phases] if multi else []))
        m = self.metrics()
        footer = (f"top operator {100 * m['profile_top_op_share']:.1f} % of device time; host↔device copies "
                  f"{100 * m['profile_copy_share']:.1f} %; host gaps between device work "
                  f"{100 * m['profile_idle_share']:.1f} % of the profiled span")
        if multi:
            footer += "; " + ", ".join(
                f"{p}: idle {100 * m[f'{METRIC_PREFIX}{p}_idle_share']:.1f} %" for p in self.phases)
        return format_table(headers, cells, title=title) + "\n" + footer

    def chart(self, top_n: int, title: str, path: Path) -> Path:
        """A horizontal bar chart of the top ``top_n`` operators' shares, one bar per phase."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows[:top_n][::-1]  # largest on top
        phases = self.phases if len(self.phases) > 1 else [None]
        height = 0.8 / len(phases)
        fig, ax = plt.subplots(figsize=(9, 1.2 + 0.45 * len(rows) * max(1, len(phases) / 2)))
        for i, phase in enumerate(phases):
            ys = [y + (i - (len(phases) - 1) / 2) * height for y in range(len(rows))]
            ax.barh(ys, [100 * self.share(r, phase) for r in rows], height=height, label=phase or "all")
        ax.set_yticks(range(len(rows)), [f"{r.op}" + (" (copy)" if r.kind == COPY else "") for r in rows],
                     fontsize="small")
        ax.set_xlabel("share of device time (%)")
        ax.set_title("\n".join(textwrap.wrap(title, CHART_TITLE_WIDTH)), fontsize="medium")
        ax.grid(True, axis="x", alpha=0.3)
        if phases != [None]:
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
