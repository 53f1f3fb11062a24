"""task=loadtest: the config refuses what it would not read or cannot use; ``-m task=loadtest loadtest.target=self
loadtest.concurrency=1,4`` serves and measures in one command (evalscope perf as the client, loopback only) and
the sweep's parent gets the throughput-latency table and plot."""

from __future__ import annotations

import pytest

from ascend_lab.errors import ConfigError


@pytest.mark.parametrize("overrides, key", [
    (["loadtest.target=self", "loadtest.base_url=http://127.0.0.1:8000"], "loadtest.base_url"),
    (["loadtest.target=url"], "loadtest.base_url"),
    (["loadtest.base_url=ftp://x"], "loadtest.base_url"),
    (["loadtest.api_key=k"], "loadtest.api_key"),
    (["loadtest.concurrency=0"], "loadtest.concurrency"),
    (["loadtest.slo_ttft_ms=-1"], "loadtest.slo_ttft_ms"),
    (["loadtest.api=embeddings"], "loadtest.api"),
    (["serve.host=example.com"], "serve.host"),
    (["serve.api_key='密钥'"], "serve.api_key"),
    (["serve.drain_s=0"], "serve.drain_s"),
    (["loadtest.base_url=http://127.0.0.1:9", "serve.max_batch=8"], "serve.max_batch"),
])
def test_invalid_settings_name_their_key(compose, overrides, key):
    from ascend_lab.config import validate

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose("task=loadtest", *overrides))


def test_a_url_target_is_inferred_from_base_url(compose):
    from ascend_lab.config import validate

    cfg = validate(compose("task=loadtest", "loadtest.base_url=http://127.0.0.1:9/v1"))
    assert cfg.loadtest.resolved_target == "url"
    assert validate(compose("task=loadtest")).loadtest.resolved_target == "self"


def test_a_prompts_file_that_is_not_utf8_fails_before_any_work(run_cli, tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes("你好\n".encode("gbk"))
    done = run_cli("task=loadtest", "tracking=off", f"loadtest.prompts_file={bad}", timeout=120)
    assert done.returncode == 1 and "loadtest.prompts_file" in done.stderr and "UTF-8" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_sweep_over_concurrency_serves_measures_and_plots(run_cli, tmp_path, mlflow_runs):
    done = run_cli("-m", "task=loadtest", "runtime=torch", "loadtest.concurrency=1,4", "loadtest.requests=8",
                   "loadtest.input_tokens=8", "loadtest.output_tokens=8", "telemetry=off", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "load-test sweep summary (2 load runs)" in done.stdout
    client, runs = mlflow_runs(tmp_path)
    parent = next(r for r in runs if r.data.tags.get("sweep") == "parent")
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and len(children) == 2
    for child in children:
        m = child.data.metrics
        assert child.info.status == "FINISHED" and m["requests_completed"] == 8 and m["requests_failed"] == 0
        assert m["total_output_tokens"] == 64  # ignore_eos + min_tokens: exactly 8 each
        for name in ("ttft_ms_mean", "ttft_ms_median", "ttft_ms_p99", "tpot_ms_p99", "itl_ms_median", "e2el_ms_p99",
                     "request_throughput_rps", "output_throughput_tokens_s", "server_ttft_ms_p50"):
            assert m[name] > 0, name
        assert child.data.tags["loadtest.target"] == "self"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"loadtest_summary.csv", "loadtest_summary.md", "loadtest_summary.png"} <= artifacts
