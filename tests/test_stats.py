"""The one statistics helper against numpy's own figures."""

from __future__ import annotations

import numpy as np
import pytest

from ascend_lab.stats import STAT_NAMES, per_second, summarize


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_summarize_matches_numpy(n):
    values = np.random.default_rng(n).lognormal(mean=1.0, sigma=0.7, size=n)
    stats = summarize(list(values))
    assert stats.count == n
    assert stats.mean == pytest.approx(values.mean())
    assert stats.std == pytest.approx(values.std())
    assert stats.min == values.min() and stats.max == values.max()
    for q in (50, 90, 95, 99):
        assert getattr(stats, f"p{q}") == pytest.approx(np.percentile(values, q))


def test_percentiles_interpolate_and_order():
    stats = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert stats.p50 == 3.0
    assert stats.p90 == pytest.approx(4.0 + 0.6 * 96.0)  # linear between the 4th and 5th values
    assert stats.min <= stats.p50 <= stats.p90 <= stats.p95 <= stats.p99 <= stats.max


def test_as_metrics_names_and_selection():
    stats = summarize([2.0, 4.0])
    every = stats.as_metrics("latency_ms")
    assert set(every) == {f"latency_ms_{name}" for name in STAT_NAMES}
    assert every["latency_ms_mean"] == 3.0 and every["latency_ms_count"] == 2.0
    assert stats.as_metrics("ttft_ms", ("mean", "p50")) == {"ttft_ms_mean": 3.0, "ttft_ms_p50": 3.0}


def test_empty_is_an_error():
    with pytest.raises(ValueError):
        summarize([])


def test_per_second():
    assert per_second(8 * 16, 250.0) == pytest.approx(512.0)
    assert per_second(4, 0.0) == 0.0
