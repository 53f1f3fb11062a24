"""task=pipeline (the default job) through the real CLI: nested stage runs, compile skipped
without atc, the summary on the pipeline run."""

from __future__ import annotations

import pytest

from ascend_lab.bench.summary import SUMMARY_FILES

from conftest import FAST_PIPELINE as FAST


@pytest.mark.slow
def test_pipeline_runs_every_stage_as_a_child(run_cli, mlflow_runs, tmp_path):
    proc = run_cli(*FAST, "benchmark.batch_sizes=[1,2]")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, runs = mlflow_runs(tmp_path)
    (pipeline,) = [r for r in runs if r.data.tags.get("task") == "pipeline"]
    assert pipeline.info.status == "FINISHED"
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id}
    assert set(children) == {"doctor", "export", "compile", "bench b=1", "bench b=2"}
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert "matmul_ms_cpu" in children["doctor"].data.metrics
    onnx_sha = children["export"].data.tags["onnx_sha256"]
    assert children["compile"].data.tags["compile_skipped"].startswith("atc not found")
    assert pipeline.data.tags["compile_skipped"] == children["compile"].data.tags["compile_skipped"]
    for batch in (1, 2):
        bench = children[f"bench b={batch}"]
        assert bench.data.tags["batch_size"] == str(batch) and bench.data.tags["runtime"] == "onnxruntime"
        assert bench.data.tags["onnx_sha256"] == onnx_sha  # measured the graph the export stage made
        m = bench.data.metrics  # the generate scenario, the default
        assert m["ttft_ms_mean"] > 0 and m["tpot_ms_mean"] > 0 and m["decode_tokens_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(pipeline.info.run_id)}
    assert set(SUMMARY_FILES) <= artifacts
    table = [line for line in proc.stdout.splitlines() if line.startswith("| onnxruntime")]
    assert [line.split("|")[2].strip() for line in table] == ["1", "2"]
    assert "mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db" in proc.stdout


@pytest.mark.slow
def test_pipeline_without_tracking_still_writes_the_summary(run_cli, tmp_path):
    proc = run_cli(*FAST, "benchmark.batch_sizes=[2]", "tracking=off", "runtime=torch")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    (summary_csv,) = tmp_path.glob("outputs/runs/*/*/summary.csv")
    for name in SUMMARY_FILES:
        assert (summary_csv.parent / name).stat().st_size > 0
    assert "| torch   | 2" in proc.stdout and "mlflow ui" not in proc.stdout
