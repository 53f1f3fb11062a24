"""No run left RUNNING: a later job's start ends, FAILED, the runs whose owning process is gone on
this host, and leaves live processes' and other hosts' runs alone."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from conftest import run_cli_in
from sweep_helpers import PARENT_TAG, finish, kill_job, split_runs, start_cli, store_client, wait_for_output, \
    wait_for_running_run

from ascend_lab.tracking import PROCESS_GONE, reap_dead_runs


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped), so nothing answers to it."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_reaper_ends_dead_local_runs_only(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e")
    here, dead = socket.gethostname(), str(_dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        def run(name, **tags):
            return client.create_run(exp, run_name=name, tags=tags).info.run_id

        parent = run("sweep", host=here, pid=dead, sweep="parent")
        child = run("job", host=here, pid=dead, **{PARENT_TAG: parent})
        old_stage = run("stage-without-owner-tags", **{PARENT_TAG: child})
        live = run("live", host=here, pid=str(sleeper.pid))
        remote = run("other-host", host=here + "-elsewhere", pid=dead)
        done = run("finished", host=here, pid=dead)
        client.set_terminated(done, "FINISHED")

        reaped = reap_dead_runs(uri)
        again = reap_dead_runs(uri)  # nothing left to end (the sleeper still lives)
    finally:
        sleeper.kill()
        sleeper.wait()

    assert {r.run_id for r in reaped} == {parent, child, old_stage}
    for run_id in (parent, child, old_stage):
        got = client.get_run(run_id)
        assert got.info.status == "FAILED"
        assert got.data.tags["error"].startswith(PROCESS_GONE)
    assert f"pid {dead} on {here}" in client.get_run(child).data.tags["error"]
    assert client.get_run(live).info.status == "RUNNING"
    assert client.get_run(remote).info.status == "RUNNING"
    assert client.get_run(done).info.status == "FINISHED" and "error" not in client.get_run(done).data.tags
    assert again == []


@pytest.mark.slow
def test_sigkilled_sweep_job_and_its_parent_are_failed_at_the_next_start(tmp_path):
    # Basic launcher: the job runs in the launching process, so SIGKILL takes the sweep's parent too.
    proc, log = start_cli(tmp_path, "-m", "task=doctor", "doctor.matmul_size=64", "doctor.repeats=100000000")
    wait_for_output(proc, log, "MLflow sweep parent run", timeout=120)
    client = store_client(tmp_path)
    child = wait_for_running_run(client, "params.`doctor.repeats` = '100000000'", timeout=180)
    killed_pid = kill_job(child)
    rc, out = finish(proc, log, timeout=60)
    assert rc == -9, out
    parent_id = child.data.tags[PARENT_TAG]
    assert client.get_run(child.info.run_id).info.status == "RUNNING"  # nobody could close them
    parent = client.get_run(parent_id)
    assert parent.info.status == "RUNNING" and parent.data.tags["pid"] == str(killed_pid)

    next_job = run_cli_in(tmp_path, "task=doctor", "doctor.matmul_size=64", "doctor.repeats=1", timeout=300)
    assert next_job.returncode == 0, next_job.stdout + next_job.stderr
    assert "Ended FAILED 2 MLflow run(s) left RUNNING by processes that are gone" in next_job.stdout
    for run_id in (child.info.run_id, parent_id):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED", run.info
        assert run.data.tags["error"].startswith("process gone (killed?)"), run.data.tags["error"]
        assert f"pid {killed_pid}" in run.data.tags["error"]
    parents, children = split_runs(client)
    assert len(parents) == 2 and len(children) == 1
    assert parents[1].info.status == "FINISHED"  # the new job's own run, untouched by the reaper
