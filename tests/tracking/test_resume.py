"""Failure injection and resume: one job raises, one is killed from outside, one finishes; the sweep
records all three and a resumed sweep (skip switch on) runs only what did not finish."""

from __future__ import annotations

import pytest

from sweep_helpers import children_of, finish, kill_job, split_runs, start_cli, store_client, \
    wait_for_output, wait_for_running_run

pytestmark = pytest.mark.slow

# repeats=2 finishes, repeats=0 is rejected by validation inside the job (a raise before the
# task's run could open), repeats=10000000 runs until the test kills its process.
SWEEP = ("-m", "task=doctor", "doctor.matmul_size=128", "doctor.repeats=2,0,10000000",
         "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "telemetry=off")
SLOW = "params.`doctor.repeats` = '10000000'"


def _run_sweep_killing_slow_job(launch_dir, *extra):
    proc, log = start_cli(launch_dir, *SWEEP, *extra)
    wait_for_output(proc, log, "MLflow sweep parent run", timeout=120)  # store created: safe to read
    client = store_client(launch_dir)
    killed_pid = kill_job(wait_for_running_run(client, SLOW, timeout=180))
    rc, out = finish(proc, log, timeout=240)
    return client, rc, out, killed_pid


def test_failed_and_killed_jobs_are_recorded_and_resume_runs_only_them(tmp_path):
    client, rc, out, killed_pid = _run_sweep_killing_slow_job(tmp_path)
    assert rc != 0, out
    parents, children = split_runs(client)
    assert len(parents) == 1
    first = parents[0]
    runs = {c.data.params.get("doctor.repeats") or c.data.tags.get("job_num"): c
            for c in children_of(children, first)}
    assert len(runs) == 3, out
    finished = runs["2"]
    assert finished.info.status == "FINISHED" and "matmul_ms_cpu" in finished.data.metrics
    # The job that raised before opening its run still got a FAILED child with the reason.
    raised = next(c for c in children_of(children, first) if c.data.tags.get("job_num") == "1")
    assert raised.info.status == "FAILED" and "doctor.repeats" in raised.data.tags["error"]
    killed = runs["10000000"]
    assert killed.info.status == "FAILED"
    assert f"pid {killed_pid}" in killed.data.tags["error"] and "killed" in killed.data.tags["error"]
    assert first.info.status == "FAILED" and first.data.tags["launcher"] == "submitit_local"
    assert first.data.tags["jobs_failed"] == "2" and first.data.tags["jobs_finished"] == "1"
    # Each submitit job is its own process, started by submitit (not the CLI process), and leaves its result.
    assert len({finished.data.tags["pid"], killed.data.tags["pid"], first.data.tags["pid"]}) == 3
    assert list(tmp_path.glob("outputs/multiruns/*/*/.submitit/*/*_result.pkl"))
    assert first.data.tags["error"] == "2 of 3 jobs failed"

    # Resume: same sweep with the skip switch; the finished config is skipped, the other two run again.
    client, rc, out, _ = _run_sweep_killing_slow_job(tmp_path, "tracking.skip_finished=true")
    assert rc != 0, out
    # submitit jobs print into their own log files.
    job_logs = "".join(f.read_text() for f in tmp_path.glob("outputs/multiruns/*/*/.submitit/*/*_log.out"))
    assert f"already has the FINISHED MLflow run {finished.info.run_id}" in job_logs
    assert "0 finished, 2 failed, 1 skipped" in out
    parents, children = split_runs(client)
    assert len(parents) == 2
    second = parents[1]
    assert second.data.tags["jobs_skipped"] == "1"
    rerun = children_of(children, second)
    assert len(rerun) == 2
    first_hashes = {c.data.tags["config_hash"] for c in children_of(children, first)}
    assert len(first_hashes) == 3
    assert {c.data.tags["config_hash"] for c in rerun} == first_hashes - {finished.data.tags["config_hash"]}
    # The FINISHED config got no new run anywhere in the experiment.
    same = [c for c in children if c.data.tags.get("config_hash") == finished.data.tags["config_hash"]]
    assert [c.info.run_id for c in same] == [finished.info.run_id]
    assert second.data.tags["jobs_failed"] == "2" and second.info.status == "FAILED"


def test_resume_of_a_finished_sweep_skips_everything(run_cli, tmp_path):
    args = ("-m", "task=doctor", "doctor.matmul_size=64", "doctor.repeats=2,3")
    assert run_cli(*args, timeout=300).returncode == 0
    again = run_cli(*args, "tracking.skip_finished=true", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "0 finished, 0 failed, 2 skipped" in again.stdout
    assert "ascend_lab doctor" not in again.stdout  # no job did the work again
    parents, children = split_runs(store_client(tmp_path))
    assert len(parents) == 2 and len(children) == 2
    assert parents[1].info.status == "FINISHED" and parents[1].data.tags["jobs_skipped"] == "2"
