"""Sweep summary: one row per benchmark run → console table, ``summary.csv``, ``summary.md`` and
``summary.png`` (throughput and latency against batch size, one line per group; tokens/s against J/token,
one point per job, where a power source exists).

Rows come either from MLflow runs (:func:`summarize_sweep`, called by
``ascend_lab.tracking.close_parent`` for every ``-m`` sweep) or from in-memory results
(``task=pipeline``, which also works with ``tracking=off``); both go through :func:`publish`.
Groups are the config values that vary between the rows besides the batch size (for instance
``runtime`` or ``model`` when those are swept too).
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ascend_lab.accuracy.gate import GATE_METRIC
from ascend_lab.report import format_number, format_table, markdown_table

log = logging.getLogger(__name__)

SUMMARY_FILES = ("summary.csv", "summary.md", "summary.png")
# Params that differ between jobs without describing what was measured.
IGNORED_PARAMS = ("benchmark.batch_size", "tracking.", "hydra.")
# (column, metric) pairs shown per scenario; metrics missing from every row are left out.
COLUMNS = (
    ("mean latency (ms)", "latency_ms"),
    ("p50 latency (ms)", "latency_p50_ms"),
    ("p99 latency (ms)", "latency_p99_ms"),
    ("throughput (tokens/s)", "tokens_s"),
    ("TTFT (ms)", "ttft_ms"),
    ("TPOT (ms)", "tpot_ms"),
    ("decode (tokens/s)", "decode_tokens_s"),
    ("roofline fraction", "roofline_fraction"),  # decode tokens/s over what the memory bandwidth allows (telemetry)
    ("NPU compute (ms)", "npu_compute_ms"),
    ("H2D bytes/token", "h2d_bytes_per_token"),
    ("D2H bytes/token", "d2h_bytes_per_token"),
    # telemetry: energy of the timed window per token (where a power source exists) and peak memory.
    ("J/token", "joules_per_token"),
    ("peak memory (MB)", "peak_memory_mb"),
    # task=accuracy (teacher-forced against the reference; see ascend_lab.accuracy): shown next to speed so
    # that a fast but wrong configuration is visible as such.
    ("top-1 agreement", "accuracy_top1"),
    ("1 − min logits cosine", "accuracy_cosine_gap"),
    ("mean KL", "accuracy_kl"),
    ("common prefix (tokens)", "accuracy_common_prefix"),
    ("accuracy gate passed", "accuracy_gate_passed"),
    # search.accuracy (a tuning sweep's bench jobs): the largest logit difference, and the gate's verdict in words.
    ("max |Δ| logits", "accuracy_max_abs_diff"),
    ("accuracy ok", "accuracy_ok"),
    # profile=on (ascend_lab.profiling): where each job's device time went, comparable across runtimes.
    ("top op share", "profile_top_op_share"),
    ("copy share", "profile_copy_share"),
    ("host idle share", "profile_idle_share"),
)
# A run carries accuracy figures when it has this metric (task=accuracy logs it).
ACCURACY_METRIC = GATE_METRIC


@dataclass
class Row:
    """One benchmark measurement (one batch size of one configuration)."""

    batch_size: int
    runtime: str
    scenario: str
    model: str
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)  # for grouping; {} for in-memory rows
    group: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.group.items()) or self.runtime

    def figure(self, name: str) -> float | None:
        """The summary figures, whichever scenario produced the row."""
        m = self.metrics
        generate = "e2e_ms_mean" in m
        return {
            "latency_ms": m.get("e2e_ms_mean") if generate else m.get("latency_ms_mean"),
            "latency_p50_ms": m.get("e2e_ms_p50") if generate else m.get("latency_ms_p50"),
            "latency_p99_ms": m.get("e2e_ms_p99") if generate else m.get("latency_ms_p99"),
            "tokens_s": m.get("throughput_tokens_s"),
            "ttft_ms": m.get("ttft_ms_mean"),
            "tpot_ms": m.get("tpot_ms_mean"),
            "decode_tokens_s": m.get("decode_tokens_s"),
            "npu_compute_ms": m.get("npu_compute_ms_mean"),
            "h2d_bytes_per_token": m.get("h2d_bytes_per_token"),
            "d2h_bytes_per_token": m.get("d2h_bytes_per_token"),
            "roofline_fraction": m.get("roofline_fraction"),
            "joules_per_token": m.get("joules_per_token"),
            "peak_memory_mb": m.get("peak_memory_mb"),
            "accuracy_top1": m.get("tf_top1_agreement_mean"),
            "accuracy_cosine_gap": None if "tf_cosine_min" not in m else 1.0 - m["tf_cosine_min"],
            "accuracy_kl": m.get("tf_kl_mean"),
            "accuracy_common_prefix": m.get("fr_common_prefix_mean"),
            "accuracy_gate_passed": m.get(ACCURACY_METRIC),
            "accuracy_max_abs_diff": m.get("tf_max_abs_diff_max"),
            "accuracy_ok": None if ACCURACY_METRIC not in m else ("yes" if m[ACCURACY_METRIC] == 1.0 else "NO"),
            "profile_top_op_share": m.get("profile_top_op_share"),
            "profile_copy_share": m.get("profile_copy_share"),
            "profile_idle_share": m.get("profile_idle_share"),
        }[name]


def is_benchmark(metrics: Mapping[str, float]) -> bool:
    """Whether a run measured something the summary shows (speed, or accuracy)."""
    return "latency_ms_mean" in metrics or "e2e_ms_mean" in metrics or ACCURACY_METRIC in metrics


def row_from_run(run) -> Row | None:
    """A row from an MLflow Run of task=bench or task=accuracy; None for runs that measured nothing."""
    metrics, tags, params = dict(run.data.metrics), dict(run.data.tags), dict(run.data.params)
    if not is_benchmark(metrics):
        return None
    batch = tags.get("batch_size") or params.get("benchmark.batch_size") or "0"
    return Row(batch_size=int(batch), runtime=tags.get("runtime") or params.get("runtime.name", "?"),
               scenario=tags.get("scenario") or params.get("benchmark.scenario", "?"),
               model=tags.get("model") or params.get("model.name", "?"), metrics=metrics, params=params)


def assign_groups(rows: Sequence[Row]) -> list[str]:
    """Set each row's group from the params that vary between rows (besides the batch size);
    returns the grouping keys. A swept ``<group>.name`` stands for its whole group."""
    keys = sorted({k for r in rows for k in r.params if not k.startswith(IGNORED_PARAMS)})
    varying = [k for k in keys if len({r.params.get(k) for r in rows}) > 1]
    names = {k.split(".")[0]: k for k in varying if k.endswith(".name")}
    varying = [k for k in varying if k.endswith(".name") or k.split(".")[0] not in names
               or not _follows(rows, names[k.split(".")[0]], k)]
    for row in rows:
        row.group = {_short(k): row.params.get(k, "-") for k in varying}
    return [_short(k) for k in varying]


def _follows(rows: Sequence[Row], name_key: str, key: str) -> bool:
    """Whether ``key``'s value is fixed by ``name_key``'s (a preset's field, not a sweep of its own)."""
    seen: dict[str | None, str | None] = {}
    for row in rows:
        name, value = row.params.get(name_key), row.params.get(key)
        if seen.setdefault(name, value) != value:
            return False
    return True


def _short(key: str) -> str:
    return key[: -len(".name")] if key.endswith(".name") else key


def sort_rows(rows: Iterable[Row]) -> list[Row]:
    rows = list(rows)
    if any(ACCURACY_METRIC in r.metrics for r in rows):
        # Rows with accuracy figures (a tuning sweep) are a ranking: fastest first, and a setting that fails its
        # accuracy gate last whatever its speed, so a fast but wrong setting is never read as the winner.
        return sorted(rows, key=lambda r: (r.metrics.get(ACCURACY_METRIC) != 1.0,
                                           -(r.figure("decode_tokens_s") or r.figure("tokens_s") or 0.0),
                                           r.label, r.batch_size))
    return sorted(rows, key=lambda r: (r.label, r.batch_size))


def table(rows: Sequence[Row], group_keys: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """(headers, cells) shared by the console, markdown and csv forms."""
    shown = [(title, name) for title, name in COLUMNS if any(r.figure(name) is not None for r in rows)]
    lead = list(group_keys) + ([] if "runtime" in group_keys else ["runtime"])
    headers = lead + ["batch size"] + [title for title, _ in shown]
    cells = []
    for row in rows:
        values = {**row.group, "runtime": row.runtime}
        cells.append([values[k] for k in lead] + [row.batch_size]
                     + [format_number(row.figure(name)) for _, name in shown])
    return headers, cells


def csv_text(rows: Sequence[Row]) -> str:
    """Every figure of every row (the console table shows a selection)."""
    metric_keys = sorted({k for r in rows for k in r.metrics})
    group_keys = sorted({k for r in rows for k in r.group})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["model", "runtime", "scenario", *group_keys, "batch_size", *metric_keys])
    for r in rows:
        writer.writerow([r.model, r.runtime, r.scenario, *(r.group.get(k, "") for k in group_keys), r.batch_size,
                         *(r.metrics.get(k, "") for k in metric_keys)])
    return out.getvalue()


def plot(rows: Sequence[Row]):
    """Throughput and latency against batch size, one line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(10, 4))
    labels = list(dict.fromkeys(r.label for r in rows))
    for label in labels:
        series = [r for r in rows if r.label == label]
        xs = [r.batch_size for r in series]
        ax_tp.plot(xs, [r.figure("tokens_s") or 0.0 for r in series], marker="o", label=label)
        ax_lat.plot(xs, [r.figure("latency_ms") or 0.0 for r in series], marker="o", label=label)
    ax_tp.set(xlabel="batch size", ylabel="tokens/s", title="throughput")
    ax_lat.set(xlabel="batch size", ylabel="ms", title="mean latency")
    for ax in (ax_tp, ax_lat):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    batch_sizes = sorted({r.batch_size for r in rows})
    for ax in (ax_tp, ax_lat):
        ax.set_xticks(batch_sizes)
    add_energy_axis(fig, rows)
    add_accuracy_axis(fig, rows)
    fig.tight_layout()
    return fig


def add_accuracy_axis(fig, rows: Sequence[Row]) -> None:
    """A further panel where rows carry accuracy figures and a speed (a tuning sweep's bench jobs): tokens/s against
    greedy agreement with the reference, one point per job; settings that fail their accuracy gate are red crosses
    (up and to the right is better)."""
    points = [r for r in rows if r.figure("accuracy_top1") is not None
              and (r.figure("decode_tokens_s") or r.figure("tokens_s")) is not None]
    if not points:
        return
    grid = fig.add_gridspec(1, len(fig.axes) + 1)
    for ax, spec in zip(fig.axes, grid):
        ax.set_subplotspec(spec)
    fig.set_size_inches(5 * (len(fig.axes) + 1), 4)
    ax = fig.add_subplot(grid[len(fig.axes)])
    for passed, style in ((True, {"marker": "o"}), (False, {"marker": "x", "color": "tab:red"})):
        chosen = [r for r in points if (r.metrics.get(ACCURACY_METRIC) == 1.0) == passed]
        ax.scatter([r.figure("accuracy_top1") for r in chosen],
                   [r.figure("decode_tokens_s") or r.figure("tokens_s") for r in chosen],
                   label="accuracy gate passed" if passed else "accuracy gate FAILED", **style)
        for r in chosen:
            ax.annotate(r.label, (r.figure("accuracy_top1"), r.figure("decode_tokens_s") or r.figure("tokens_s")),
                        fontsize="xx-small", textcoords="offset points", xytext=(3, 3))
    ax.set(xlabel="greedy agreement with the reference", ylabel="tokens/s", title="speed against accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def add_energy_axis(fig, rows: Sequence[Row]) -> None:
    """A third panel where any row has J/token: tokens/s against J/token, one point per job, labelled with
    its batch size (up and to the left is better). Rows without a power source are left out."""
    points = [r for r in rows if r.figure("joules_per_token") is not None and r.figure("tokens_s") is not None]
    if not points:
        return
    grid = fig.add_gridspec(1, 3)
    for ax, spec in zip(fig.axes, grid):
        ax.set_subplotspec(spec)
    fig.set_size_inches(15, 4)
    ax = fig.add_subplot(grid[2])
    for label in dict.fromkeys(r.label for r in points):
        series = [r for r in points if r.label == label]
        ax.scatter([r.figure("joules_per_token") for r in series], [r.figure("tokens_s") for r in series], label=label)
        for r in series:
            ax.annotate(f"b{r.batch_size}", (r.figure("joules_per_token"), r.figure("tokens_s")), fontsize="small",
                        textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="J/token (timed window)", ylabel="tokens/s", title="throughput against energy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def write_files(rows: Sequence[Row], group_keys: Sequence[str], out_dir: Path, title: str) -> tuple[str, list[Path]]:
    """Write the three summary files into ``out_dir``; returns (console table, paths)."""
    import matplotlib.pyplot as plt

    headers, cells = table(rows, group_keys)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in SUMMARY_FILES]
    paths[0].write_text(csv_text(rows), encoding="utf-8")
    paths[1].write_text(markdown_table(headers, cells, title), encoding="utf-8")
    fig = plot(rows)
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return format_table(headers, cells, title=title), paths


def publish(tracker, rows: Sequence[Row], out_dir: Path | None = None, title: str = "benchmark summary") -> str | None:
    """Print the table and log the summary files on ``tracker``'s run; also kept in ``out_dir`` when
    given. Nothing to summarise → no files, returns None."""
    rows = [r for r in rows if is_benchmark(r.metrics)]
    if not rows:
        return None
    group_keys = assign_groups(rows)
    rows = sort_rows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        text, paths = write_files(rows, group_keys, Path(out_dir) if out_dir else Path(tmp), title)
        for path in paths:
            tracker.log_artifact(path)
    print(text)
    return text


def summarize_sweep(tracker, child_runs: Sequence[Any]) -> str | None:
    """The sweep parent's summary from its children (MLflow Run objects); non-benchmark runs skipped. A run that
    failed its accuracy gate is FAILED but measured everything: it is shown (gate column 0), not dropped."""
    rows = [row for row in (row_from_run(run) for run in child_runs if run.info.status == "FINISHED"
                            or ACCURACY_METRIC in run.data.metrics) if row]
    if not rows:
        log.info("sweep summary: no finished benchmark runs among %d children", len(child_runs))
        return None
    return publish(tracker, rows, title=f"sweep summary ({len(rows)} benchmark runs)")
