"""Sweeps across launchers: parallel jobs on one SQLite store, Ctrl-C, and the example SLURM launcher config
(the submitit code path runs in test_resume.py, whose sweep is a submitit_local one)."""

from __future__ import annotations

import signal

import pytest

from sweep_helpers import children_of, finish, split_runs, start_cli, store_client, wait_for_output, \
    wait_for_running_run

DOCTOR_METRICS = ("matmul_ms_device", "matmul_ms_cpu", "matmul_tflops_device",
                  "device_mem_reserved_mb", "device_count")
# Telemetry is not under test here: its sampling thread would only add work to every job.
FAST_DOCTOR = ("task=doctor", "doctor.matmul_size=64", "telemetry=off")


@pytest.mark.slow
def test_eight_parallel_jobs_on_sqlite_lose_nothing(run_cli, tmp_path):
    repeats = list(range(1, 9))
    result = run_cli("-m", *FAST_DOCTOR, f"doctor.repeats={','.join(map(str, repeats))}",
                     "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", timeout=400)
    assert result.returncode == 0, result.stderr
    parents, children = split_runs(store_client(tmp_path))
    assert len(parents) == 1 and len(children) == 8
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["jobs_total"] == "8" and parent.data.tags["jobs_failed"] == "0"
    assert parent.data.tags["launcher"] == "joblib"
    assert sorted(int(c.data.params["doctor.repeats"]) for c in children) == repeats
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        missing = [m for m in DOCTOR_METRICS if m not in child.data.metrics]
        assert not missing, (child.data.params["doctor.repeats"], missing)
        assert child.data.metrics["matmul_ms_cpu"] > 0
    # Jobs really ran in worker processes, and every config has its own identity.
    assert len({c.data.tags["pid"] for c in children}) >= 2
    assert len({c.data.tags["config_hash"] for c in children}) == 8
    assert "8 finished, 0 failed" in result.stdout


@pytest.mark.slow
def test_ctrl_c_single_run_ends_killed_and_keeps_what_was_logged(tmp_path):
    proc, log = start_cli(tmp_path, "task=doctor", "doctor.matmul_size=256", "doctor.repeats=10000000")
    wait_for_output(proc, log, "MLflow run ")
    client = store_client(tmp_path)
    # Wait until the job logged its config (the first thing after opening the run), then interrupt.
    wait_for_running_run(client, "params.`doctor.repeats` = '10000000'")
    proc.send_signal(signal.SIGINT)
    rc, out = finish(proc, log, timeout=60)
    assert rc == 130, out
    assert "Interrupted" in out and "Traceback" not in out
    runs = client.search_runs([client.get_experiment_by_name("ascend_lab").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "KILLED"
    assert "interrupted" in run.data.tags["error"]
    assert run.data.params["doctor.repeats"] == "10000000" and run.data.tags["config_hash"]
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_ctrl_c_sweep_ends_running_job_and_parent_killed(tmp_path):
    proc, log = start_cli(tmp_path, "-m", *FAST_DOCTOR, "doctor.repeats=2,10000000")
    wait_for_output(proc, log, "MLflow run ", count=2, timeout=180)
    client = store_client(tmp_path)
    wait_for_running_run(client, "params.`doctor.repeats` = '10000000'")
    proc.send_signal(signal.SIGINT)
    rc, out = finish(proc, log, timeout=60)
    assert rc == 130, out
    parents, children = split_runs(client)
    assert len(parents) == 1
    by_repeats = {c.data.params["doctor.repeats"]: c for c in children_of(children, parents[0])}
    assert by_repeats["2"].info.status == "FINISHED"
    assert "matmul_ms_cpu" in by_repeats["2"].data.metrics  # logged before Ctrl-C: kept
    assert by_repeats["10000000"].info.status == "KILLED"
    assert parents[0].info.status == "KILLED"
    assert parents[0].data.tags["jobs_failed"] == "1"


def test_ascend_slurm_config_builds_an_npu_sbatch_script(compose, tmp_path, monkeypatch):
    """The example SLURM launcher composes and submitit turns it into the expected sbatch options."""
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    cfg = compose("hydra/launcher=ascend_slurm", "hydra.launcher.partition=npu", return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    # No SLURM here: skip submitit's "is srun on PATH" probe; the sbatch text is built the same way,
    # with the same split of keys as hydra-submitit-launcher's BaseSubmititLauncher.launch.
    monkeypatch.setattr(SlurmExecutor, "affinity", staticmethod(lambda: 1))
    import submitit

    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path,
                                     slurm_max_num_timeout=launcher["max_num_timeout"])
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "name",
            "stderr_to_stdout"}
    params = {k: v for k, v in launcher.items() if k not in {"_target_", "submitit_folder", "max_num_timeout"}}
    params["name"] = "ascend_lab"
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m ascend_lab.run", "uid")
    assert "#SBATCH --partition=npu" in script
    assert "#SBATCH --gres=npu:1" in script
    assert "#SBATCH --time=120" in script
    assert "#SBATCH --cpus-per-task=16" in script
    assert "#SBATCH --mem=64GB" in script
    assert "source /usr/local/Ascend/ascend-toolkit/set_env.sh" in script
