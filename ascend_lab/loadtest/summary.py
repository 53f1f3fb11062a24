"""A load-test sweep's summary on its parent run: one row per load run (console table, ``loadtest_summary.csv``,
``loadtest_summary.md``) and ``loadtest_summary.png``, the curve serving people read: output tokens/s against
latency (mean TPOT and p99 TTFT), one point per concurrency (or rate), one line per endpoint/configuration.
Called by the sweep's closing (``hydra.callbacks.tracking.more_summarizers`` in conf/config.yaml); runs that are
not load tests are left to the other summaries.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ascend_lab.report import format_table, markdown_table

log = logging.getLogger(__name__)

MARK_METRIC = "output_throughput_tokens_s"  # every load run logs it
FILES = ("loadtest_summary.csv", "loadtest_summary.md", "loadtest_summary.png")
COLUMNS = (
    ("req/s", "request_throughput_rps"),
    ("output tok/s", "output_throughput_tokens_s"),
    ("TTFT mean (ms)", "ttft_ms_mean"),
    ("TTFT p99 (ms)", "ttft_ms_p99"),
    ("TPOT mean (ms)", "tpot_ms_mean"),
    ("ITL p99 (ms)", "itl_ms_p99"),
    ("E2EL mean (ms)", "e2el_ms_mean"),
    ("goodput (req/s)", "goodput_rps"),
    ("failed", "requests_failed"),
)


@dataclass
class LoadRow:
    label: str  # what the load ran against
    concurrency: int
    rate: str
    metrics: dict[str, float]


def row_from_run(run) -> LoadRow | None:
    metrics, params, tags = dict(run.data.metrics), dict(run.data.params), dict(run.data.tags)
    if MARK_METRIC not in metrics:
        return None
    if tags.get("loadtest.target") == "self":  # served on a fresh port each job: named by what was served
        label = f"self ({tags.get('runtime', '?')}, {tags.get('model', '?')})"
    else:
        label = tags.get("loadtest.target_url") or params.get("loadtest.base_url") or "?"
    return LoadRow(label=label, concurrency=int(params.get("loadtest.concurrency", "0")),
                   rate=params.get("loadtest.rate", "None"), metrics=metrics)


def publish(tracker, rows: Sequence[LoadRow], title: str) -> str:
    rows = sorted(rows, key=lambda r: (r.label, r.concurrency, r.rate))
    shown = [(t, k) for t, k in COLUMNS if any(k in r.metrics for r in rows)]
    headers = ["target", "concurrency", "rate"] + [t for t, _ in shown]
    cells = [[r.label, r.concurrency, r.rate, *(r.metrics.get(k) for _, k in shown)] for r in rows]
    text = format_table(headers, cells, title=title)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / name for name in FILES]
        out = io.StringIO()
        writer = csv.writer(out)
        keys = sorted({k for r in rows for k in r.metrics})
        writer.writerow(["target", "concurrency", "rate", *keys])
        for r in rows:
            writer.writerow([r.label, r.concurrency, r.rate, *(r.metrics.get(k, "") for k in keys)])
        paths[0].write_text(out.getvalue(), encoding="utf-8")
        paths[1].write_text(markdown_table(headers, cells, title=title), encoding="utf-8")
        save_plot(rows, paths[2])
        for path in paths:
            tracker.log_artifact(path)
    print(text)
    return text


def save_plot(rows: Sequence[LoadRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, title) in zip(axes, (("tpot_ms_mean", "mean time per output token"),
                                        ("ttft_ms_p99", "p99 time to first token"))):
        for label in dict.fromkeys(r.label for r in rows):
            series = [r for r in rows if r.label == label and key in r.metrics]
            xs = [r.metrics[MARK_METRIC] for r in series]
            ys = [r.metrics[key] for r in series]
            ax.plot(xs, ys, marker="o", label=label)
            for r, x, y in zip(series, xs, ys):
                ax.annotate(f"c{r.concurrency}", (x, y), fontsize="small", textcoords="offset points", xytext=(4, 4))
        ax.set(xlabel="output tokens/s", ylabel="ms", title=title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("throughput against latency (one point per concurrency)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summarize_sweep(tracker, child_runs: Sequence[Any]) -> str | None:
    rows = [row for row in (row_from_run(run) for run in child_runs if run.info.status == "FINISHED") if row]
    if not rows:
        return None
    return publish(tracker, rows, f"load-test sweep summary ({len(rows)} load runs)")
