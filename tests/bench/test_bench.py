"""Benchmark group: scenarios, memory sampling, the sweep summary, and task=bench / task=infer
through the real CLI against the real MLflow store."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ascend_lab.bench import summary
from ascend_lab.bench.memory import peak_rss_mb, reset_peak_rss, rss_mb
from ascend_lab.bench.scenarios import make_inputs, run_forward
from ascend_lab.config import BenchmarkConfig
from ascend_lab.device import HostTimer

from conftest import SMALL_BANDWIDTH

FORWARD_METRICS = ("latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_std",
                   "throughput_samples_s", "throughput_tokens_s", "host_peak_rss_mb", "host_rss_growth_mb",
                   "load_seconds")
GENERATE_METRICS = ("ttft_ms_mean", "ttft_ms_p50", "tpot_ms_mean", "tpot_ms_p50", "tpot_ms_p99", "decode_tokens_s",
                    "e2e_ms_mean", "throughput_tokens_s", "host_peak_rss_mb", "host_rss_growth_mb")
FAST = ("benchmark.warmup=1", "benchmark.iterations=3", "benchmark.min_duration_s=0", SMALL_BANDWIDTH)


class Recorder:
    """A tracker that keeps what it is given (the base Tracker records nothing)."""

    def __init__(self):
        self.artifacts: list[Path] = []
        self.copies: dict[str, bytes] = {}

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append(Path(path))
        self.copies[Path(path).name] = Path(path).read_bytes()


def fake_run(batch, metrics, status="FINISHED", **params):
    tags = {"batch_size": str(batch), "runtime": params.pop("tag_runtime", "onnxruntime"), "model": "tiny_qwen",
            "scenario": "forward"}
    return SimpleNamespace(info=SimpleNamespace(status=status),
                           data=SimpleNamespace(metrics=metrics, tags=tags,
                                                params={"benchmark.batch_size": str(batch), **params}))


def forward_metrics(batch, latency):
    return {"latency_ms_mean": latency, "latency_ms_p50": latency, "latency_ms_p99": latency * 1.5,
            "throughput_tokens_s": batch * 16 / latency * 1e3}


def test_make_inputs_random_is_seeded_and_prompt_is_repeated():
    bench = BenchmarkConfig(seq_len=5)
    a, mask = make_inputs(bench, 3, 100, seed=7)
    b, _ = make_inputs(bench, 3, 100, seed=7)
    assert a.shape == (3, 5) and a.dtype == np.int64 and (a < 100).all()
    np.testing.assert_array_equal(a, b)
    assert mask.sum() == 15
    from ascend_lab.models import build_byte_tokenizer

    ids, _ = make_inputs(BenchmarkConfig(input_source="prompt", prompt="ab"), 2, 384, 0, build_byte_tokenizer())
    assert ids.tolist() == [[ord("a"), ord("b")]] * 2


def test_run_forward_respects_both_minimums_and_reports_throughput():
    calls = []
    bench = BenchmarkConfig(warmup=2, iterations=4, min_duration_s=0.05)
    result = run_forward(lambda: calls.append(__import__("time").sleep(0.005)), 4, 8, bench, HostTimer)
    n = len(result.samples_ms)
    assert n >= 4 and sum(result.samples_ms) >= 45  # ≥ 0.05 s timed (allowing clock granularity)
    assert len(calls) == n + 2  # warm-up untimed
    m = result.metrics
    assert m["iterations"] == n and m["latency_ms_mean"] == pytest.approx(np.mean(result.samples_ms))
    assert m["throughput_tokens_s"] == pytest.approx(4 * 8 / (m["latency_ms_mean"] / 1e3))
    assert m["throughput_samples_s"] == pytest.approx(4 / (m["latency_ms_mean"] / 1e3))
    assert m["host_peak_rss_mb"] > 0 and "device_peak_mb" not in m


def test_acl_style_timings_are_reported_in_ais_bench_terms():
    class Timed:
        timings = {"npu_compute_ms": [], "h2d_ms": [], "d2h_ms": []}

        def __call__(self):
            for key, value in (("npu_compute_ms", 2.0), ("h2d_ms", 0.5), ("d2h_ms", 0.25)):
                self.timings[key].append(value + len(self.timings[key]))  # the k-th run: value + k

    timed = Timed()
    result = run_forward(timed, 8, 4, BenchmarkConfig(warmup=2, iterations=3, min_duration_s=0), HostTimer, timed)
    # Only the timed runs count: entries 2, 3, 4 (the first two were warm-up).
    assert result.metrics["npu_compute_ms_mean"] == pytest.approx(2.0 + 3.0)
    assert result.metrics["h2d_ms_mean"] == pytest.approx(0.5 + 3.0)
    assert result.metrics["npu_throughput_samples_s"] == pytest.approx(1000 * 8 / 5.0)


def test_host_peak_sees_a_temporary_peak_and_resets():
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, touched
    del block
    assert reset_peak_rss()  # Linux: the kernel's high-water mark restarts at the current RSS
    before = rss_mb()
    assert peak_rss_mb() < before + 40
    block = np.ones(64 * 1024 * 1024 // 8)
    del block
    assert peak_rss_mb() >= before + 40


def test_summary_groups_by_what_varies_and_writes_files(tmp_path, capsys):
    runs = [fake_run(b, forward_metrics(b, lat * scale), **{"runtime.name": rt, "model.name": "tiny_qwen"},
                     tag_runtime=rt)
            for rt, scale in (("torch", 1.0), ("onnxruntime", 0.5)) for b, lat in ((4, 20.0), (1, 10.0))]
    runs.append(fake_run(8, {"jobs_total": 1.0}))  # not a benchmark run
    runs.append(fake_run(8, forward_metrics(8, 1.0), status="FAILED", **{"runtime.name": "torch"}))
    tracker = Recorder()
    text = summary.summarize_sweep(tracker, runs)
    assert [p.name for p in tracker.artifacts] == list(summary.SUMMARY_FILES)
    assert tracker.copies["summary.png"].startswith(b"\x89PNG")
    printed = capsys.readouterr().out
    assert text in printed and "throughput (tokens/s)" in printed and "batch size" in printed
    rows = list(csv.DictReader(tracker.copies["summary.csv"].decode().splitlines()))
    assert [(r["runtime"], r["batch_size"]) for r in rows] == [("onnxruntime", "1"), ("onnxruntime", "4"),
                                                             ("torch", "1"), ("torch", "4")]
    assert float(rows[0]["latency_ms_mean"]) == 5.0 and "model.name" not in rows[0]
    md = tracker.copies["summary.md"].decode()
    assert md.count("\n| ") == 5 and "| runtime | batch size | mean latency (ms)" in md


def test_summary_with_nothing_to_summarise_writes_nothing():
    tracker = Recorder()
    assert summary.summarize_sweep(tracker, [fake_run(1, {"jobs_total": 2.0})]) is None
    assert summary.publish(tracker, []) is None
    assert tracker.artifacts == []


def test_swept_group_name_stands_for_its_group():
    rows = [summary.Row(1, "torch", "forward", m, {"latency_ms_mean": 1.0},
                        params={"model.name": m, "model.hidden_size": h, "seed": "0"})
            for m, h in (("a", "64"), ("b", "128"))]
    assert summary.assign_groups(rows) == ["model"]
    assert rows[1].group == {"model": "b"} and rows[1].label == "model=b"
    # A field swept on its own beside the name stays a grouping key.
    rows = [summary.Row(1, rt, "generate", "tiny_qwen", {"e2e_ms_mean": 1.0},
                        params={"runtime.name": rt, "runtime.graph_capture": gc})
            for rt in ("torch", "onnxruntime") for gc in ("False", "True")]
    assert summary.assign_groups(rows) == ["runtime.graph_capture", "runtime"]
    assert len({r.label for r in rows}) == 4


# ------------------------------------------------------------------------------------------------
# The real CLI


@pytest.mark.slow
def test_batch_sweep_gives_children_and_a_summarised_parent(run_cli, mlflow_runs, tmp_path, export_cache):
    proc = run_cli("-m", "task=bench", "benchmark.scenario=forward", "benchmark.batch_size=1,2,4", "runtime=onnxruntime",
                   export_cache, *FAST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(int(c.data.tags["batch_size"]) for c in children) == [1, 2, 4]
    for child in children:
        assert child.info.status == "FINISHED"
        missing = [m for m in FORWARD_METRICS if m not in child.data.metrics]
        assert not missing, missing
        tags = child.data.tags
        assert tags["runtime"] == "onnxruntime" and tags["scenario"] == "forward" and tags["model"] == "tiny_qwen"
        assert len(tags["onnx_sha256"]) == 64
        m = child.data.metrics
        batch = int(tags["batch_size"])
        assert m["throughput_tokens_s"] == pytest.approx(batch * 16 / (m["latency_ms_mean"] / 1e3), rel=1e-6)
        assert m["latency_ms_p50"] <= m["latency_ms_p99"]
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert set(summary.SUMMARY_FILES) <= artifacts
    assert "throughput (tokens/s)" in proc.stdout and "batch size" in proc.stdout
    table_lines = [line for line in proc.stdout.splitlines() if line.startswith("| onnxruntime")]
    assert len(table_lines) == 3


@pytest.mark.slow
def test_generate_scenario_metrics(run_cli, mlflow_runs, tmp_path, export_cache):
    proc = run_cli("task=bench", "benchmark.scenario=generate", "benchmark.batch_size=2", "benchmark.new_tokens=8",
                   "runtime=onnxruntime", export_cache, *FAST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, runs = mlflow_runs(tmp_path)
    (run,) = runs
    m = run.data.metrics
    missing = [k for k in GENERATE_METRICS if k not in m]
    assert not missing, missing
    assert m["ttft_ms_mean"] > 0 and m["tpot_ms_mean"] > 0 and m["decode_tokens_s"] > 0
    assert m["decode_tokens_s"] == pytest.approx(2 * 7 / (m["decode_ms_mean"] / 1e3), rel=1e-6)
    assert m["throughput_tokens_s"] == pytest.approx(2 * 8 / (m["e2e_ms_mean"] / 1e3), rel=1e-6)
    assert m["e2e_ms_mean"] >= m["ttft_ms_mean"] + 7 * m["tpot_ms_mean"] * 0.99
    assert run.data.tags["scenario"] == "generate" and run.data.tags["engine"] == "CacheEngine"


@pytest.mark.slow
def test_infer_prints_generated_text(run_cli, mlflow_runs, tmp_path):
    proc = run_cli("task=infer", "runtime=torch", "benchmark.prompt=hello", "benchmark.new_tokens=6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "prompt:    hello" in proc.stdout and "generated: " in proc.stdout
    client, runs = mlflow_runs(tmp_path)
    (run,) = runs
    assert {"ttft_ms", "tpot_ms_mean", "decode_tokens_s"} <= set(run.data.metrics)
    assert run.data.tags["runtime"] == "torch"
    text_path = client.download_artifacts(run.info.run_id, "generated_text.txt", str(tmp_path))
    assert Path(text_path).read_text().startswith("prompt: hello\ngenerated: ")


@pytest.mark.slow
def test_auto_picks_acl_where_atc_and_pyacl_exist(run_cli, mlflow_runs, tmp_path, export_cache):
    """With the stand-in atc on PATH and the pyACL simulator importable, runtime=auto compiles and
    measures the .om, reporting ais_bench's terms beside the end-to-end figures."""
    import json

    from conftest import stand_in_env

    leaks = tmp_path / "leaks.json"
    env = stand_in_env(leaks)
    proc = run_cli("task=bench", export_cache, *FAST, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, runs = mlflow_runs(tmp_path)
    (run,) = runs
    tags, m = run.data.tags, run.data.metrics
    assert tags["runtime"] == "acl" and tags["runtime.reason"].startswith("auto: compiled .om and pyACL available")
    assert len(tags["om_sha256"]) == 64 and len(tags["onnx_sha256"]) == 64
    for key in ("npu_compute_ms_mean", "h2d_ms_mean", "d2h_ms_mean", "npu_throughput_samples_s", "tpot_ms_mean",
                "h2d_bytes_per_token", "d2h_bytes_per_token", "runtime_calls_per_token"):
        assert m[key] > 0, key
    assert m["npu_compute_ms_mean"] < m["tpot_ms_mean"]  # execute alone, without the copies
    assert json.loads(leaks.read_text())["leaks"] == []
