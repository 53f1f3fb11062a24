"""Shared tracking: a real `mlflow server` on loopback, and an unreachable one (strict or not)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from sweep_helpers import split_runs

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of a real MLflow server with its own SQLite store and artifact folder."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
           "--artifacts-destination", str(root / "art"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log = (root / "server.log").open("w")
    # The server's job executor (MLflow's background jobs for GenAI features) is off: tracking does not use it,
    # and its worker processes take seconds to start and to stop.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health:\n" + \
                (root / "server.log").read_text()
            time.sleep(0.5)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_sweep_logs_to_a_tracking_server(run_cli, tmp_path, mlflow_server):
    url, server_root = mlflow_server
    result = run_cli("-m", "task=doctor", "doctor.matmul_size=64", "doctor.repeats=2,3", "telemetry=off", f"tracking.uri={url}",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=1", timeout=300)  # jobs in a worker process
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # nothing went to the local default

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    parents, children = split_runs(client)
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["jobs_total"] == "2"
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.metrics["matmul_ms_cpu"] > 0
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server
    # Artifacts went through the server into its --artifacts-destination and come back the same way.
    run = children[0]
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "download"))
    import yaml

    downloaded = yaml.safe_load(open(local))
    assert downloaded["doctor"]["repeats"] == int(run.data.params["doctor.repeats"])
    assert list((server_root / "art").rglob("config.yaml"))


def _unused_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens there


@pytest.mark.parametrize("sweep", [False, True], ids=["single", "sweep"])
def test_unreachable_server_strict_fails_before_any_work(run_cli, tmp_path, sweep):
    url = _unused_url()
    args = ["-m", "doctor.repeats=2,3"] if sweep else ["doctor.repeats=2"]
    result = run_cli(*args, "task=doctor", "doctor.matmul_size=64", f"tracking.uri={url}", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"MLflow tracking server {url} is unreachable" in result.stderr
    assert "tracking.strict=false" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ascend_lab doctor" not in result.stdout  # no doctor table: no work done
    assert "MLflow run " not in result.stdout
    assert not list(tmp_path.glob("outputs/multiruns/*/*/0"))  # no sweep job started
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_unreachable_server_non_strict_falls_back_to_named_local_store(run_cli, tmp_path, mlflow_runs):
    url = _unused_url()
    result = run_cli("task=doctor", "doctor.matmul_size=64", "doctor.repeats=2", f"tracking.uri={url}",
                     "tracking.strict=false", timeout=120)
    assert result.returncode == 0, result.stderr
    fallback = tmp_path / "outputs" / "mlflow.db"
    assert f"tracking server {url} unreachable" in result.stderr
    assert f"sqlite:///{fallback}" in result.stderr  # the warning names the store the run went to
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["tracking.uri"] == url and "matmul_ms_cpu" in runs[0].data.metrics
