"""The one statistics helper: every latency figure ascend_lab reports goes through :func:`summarize`.

Percentiles use numpy's default linear interpolation (the same as ais_bench's ``np.percentile``),
the standard deviation is the population one (``np.std``), as optimum-benchmark reports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

STAT_NAMES = ("mean", "p50", "p90", "p95", "p99", "std", "min", "max", "count")


@dataclass(frozen=True)
class Stats:
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    std: float
    min: float
    max: float
    count: int

    def as_metrics(self, prefix: str, names: Iterable[str] = STAT_NAMES) -> dict[str, float]:
        """``{"<prefix>_mean": .., "<prefix>_p50": ..}`` for the chosen statistics."""
        values = asdict(self)
        return {f"{prefix}_{name}": float(values[name]) for name in names}


def summarize(values_ms: Sequence[float]) -> Stats:
    """Statistics of a non-empty list of milliseconds."""
    values = np.asarray(list(values_ms), dtype=np.float64)
    if values.size == 0:
        raise ValueError("summarize() needs at least one value")
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return Stats(mean=float(values.mean()), p50=float(p50), p90=float(p90), p95=float(p95), p99=float(p99),
                 std=float(values.std()), min=float(values.min()), max=float(values.max()), count=int(values.size))


def per_second(volume: float, mean_ms: float) -> float:
    """Throughput: ``volume`` units per mean latency, per second (0 when the latency is 0)."""
    return volume / (mean_ms / 1e3) if mean_ms > 0 else 0.0
