"""The real CLI: bad input exits non-zero with one clear message; doctor is recorded in MLflow."""

from __future__ import annotations

import re
import sys
import types

import pytest
from conftest import cli_env

from ascend_lab.config import Task
from ascend_lab.run import TASK_MODULES, unread_group_overrides

HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
NO_NPU = "device=npu: torch_npu is not installed here"

pytestmark = pytest.mark.slow

BAD_INPUTS = [
    # (override, text the message must contain)
    ("benchmark.batchsize=4", "benchmark.batchsize"),
    ("benchmark.batch_size=abc", "benchmark.batch_size"),
    ("benchmark.batch_size=0", "benchmark.batch_size"),
    ("benchmark.batch_size=-1", "benchmark.batch_size"),
    ("atc.soc_version=Ascend910X", "Ascend910B3"),
    ("device=tpu", "Available options in 'device'"),
    ("task=trian", "expected one of [doctor, mnist, export, compile, infer, bench, accuracy, pipeline, serve, loadtest]"),
    ("tracking.uri=notauri", "tracking.uri"),
]


@pytest.mark.parametrize("override,expected", BAD_INPUTS)
def test_bad_input_fails_before_any_work(run_cli, tmp_path, override, expected):
    result = run_cli("task=doctor", override, timeout=120)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and HYDRA_HINT not in result.stderr
    # Nothing ran: no doctor table, no MLflow run opened.
    assert "ascend_lab doctor" not in result.stdout
    assert not (tmp_path / "outputs" / "mlflow.db").exists() or "MLflow run" not in result.stdout


def test_missing_accelerator_is_explained(run_cli, tmp_path):
    result = run_cli("task=doctor", "device=npu", "tracking=off", timeout=120)
    assert result.returncode == 1
    # A user error ends with its own message (one line, then its details indented): no traceback, and no promise
    # of one.
    lines = result.stderr.rstrip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(NO_NPU))
    assert all(line.startswith("  ") for line in lines[first + 1:]), result.stderr
    assert "Traceback" not in result.stderr and HYDRA_HINT not in result.stderr


def test_hydra_full_error_still_gives_the_traceback_of_a_user_error(run_cli):
    env = cli_env()
    env["HYDRA_FULL_ERROR"] = "1"
    result = run_cli("task=doctor", "device=npu", "tracking=off", timeout=120, env=env)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and NO_NPU in result.stderr


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_a_crash_keeps_hydras_report(run_cli, monkeypatch, multirun):
    # A task module whose run() crashes: a genuine bug, not a user error, through the real entry point.
    monkeypatch.setitem(sys.modules, "crashing_task", types.SimpleNamespace(run=lambda cfg, ctx: 1 / 0))
    monkeypatch.setitem(TASK_MODULES, Task.doctor, "crashing_task")
    result = run_cli(*["-m"] * multirun, "task=doctor", "tracking=off", timeout=120)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ZeroDivisionError" in result.stderr
    assert HYDRA_HINT in result.stderr


def test_override_of_a_group_the_task_does_not_read_is_warned_once(run_cli):
    result = run_cli("task=doctor", "mnist.lr=0.5", "tracking=off", "doctor.matmul_size=64", "doctor.repeats=1",
                     timeout=120)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "has no effect" in line]
    assert len(warnings) == 1, warnings
    assert "WARNING" in warnings[0] and "mnist.lr=0.5" in warnings[0] and "task=doctor" in warnings[0]


def test_an_atc_override_in_a_job_that_compiles_nothing_is_warned(run_cli, export_cache):
    result = run_cli("task=bench", "runtime=onnxruntime", "model=tiny_qwen", export_cache, "atc.soc_version=Ascend910B4",
                     "tracking=off", "telemetry=off", "benchmark.warmup=0", "benchmark.iterations=1",
                     "benchmark.min_duration_s=0", timeout=300)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "has no effect" in line]
    assert len(warnings) == 1 and "WARNING" in warnings[0], warnings
    assert "atc.soc_version=Ascend910B4 has no effect: task=bench with runtime=onnxruntime compiles no .om" in warnings[0]


@pytest.mark.parametrize("overrides,warned", [
    (["task=doctor", "mnist.lr=0.5"], ["mnist.lr=0.5"]),
    (["task=doctor", "+mnist.lr=0.5", "~mnist.epochs", "model=qwen2_5_0_5b_instruct"],
     ["+mnist.lr=0.5", "~mnist.epochs", "model=qwen2_5_0_5b_instruct"]),
    # Read by the task, or never out of place: tracking, hydra, task, seed.
    (["task=doctor", "device=cpu", "doctor.repeats=1", "atc.toolkit_home=/opt/cann", "seed=3", "tracking=off",
      "tracking.experiment=x", "hydra.job.chdir=false", "hydra/launcher=basic"], []),
    (["task=mnist", "mnist.lr=0.5", "benchmark.batch_size=4"], ["benchmark.batch_size=4"]),
    (["task=pipeline", "runtime=torch", "model=qwen2_5_0_5b_instruct", "mnist.epochs=3"], ["mnist.epochs=3"]),
    # atc beyond the toolkit's location is read only where a job compiles: task=compile and task=pipeline, and a
    # runtime that loads an .om (acl, or auto, which may pick it).
    (["task=doctor", "atc.soc_version=Ascend910B4"], ["atc.soc_version=Ascend910B4"]),
    (["task=bench", "runtime=onnxruntime", "atc.soc_version=Ascend910B4", "atc.toolkit_home=/opt/cann",
      "atc.precision_mode=force_fp16"], ["atc.soc_version=Ascend910B4", "atc.precision_mode=force_fp16"]),
    (["task=serve", "runtime=torch", "atc.export_dtype=float16"], ["atc.export_dtype=float16"]),
    (["task=bench", "runtime=acl", "atc.soc_version=Ascend910B4"], []),
    (["task=infer", "atc.soc_version=Ascend910B4"], []),  # runtime=auto
    (["task=pipeline", "runtime=onnxruntime", "atc.soc_version=Ascend910B4"], []),
    (["task=compile", "atc.soc_version=Ascend910B4"], []),
])
def test_unread_group_overrides(overrides, warned):
    from ascend_lab.runtimes.registry import RUNTIME_CONFIGS

    task = Task(overrides[0].split("=")[1])
    runtime = next((RUNTIME_CONFIGS[o.split("=")[1]]() for o in overrides if o.startswith("runtime=")), None)
    warnings = unread_group_overrides(task, overrides, runtime)
    assert [w.split(" has no effect")[0] for w in warnings] == warned
    for warning, override in zip(warnings, warned):
        if override.startswith("atc."):
            mode = f"task={task.value}" + (f" with runtime={runtime.name}" if runtime else "")
            assert f"{mode} compiles no .om, and of the atc group reads only atc.toolkit_home" in warning
        else:
            assert f"task={task.value} reads only the" in warning


def test_doctor_is_recorded(run_cli, tmp_path, mlflow_runs):
    result = run_cli("task=doctor", "doctor.matmul_size=256", "doctor.repeats=3", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ascend_lab doctor" in result.stdout
    # On the CPU there is no accelerator to compare with: no speedup of the CPU over itself.
    assert re.search(r"\| speedup \(CPU / device\) +\| - \(no accelerator to compare\) +\|", result.stdout)
    assert "on device (ms)" not in result.stdout
    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["task"] == "doctor"
    assert params["doctor.matmul_size"] == "256"
    assert params["atc.soc_version"] == "Ascend910B3"
    assert params["benchmark.batch_size"] == "1"
    assert tags["task"] == "doctor"
    assert tags["device"] == "cpu" and tags["device.reason"].startswith("auto: no accelerator")
    assert tags["version.torch"] and tags["version.python"] and tags["version.onnxruntime"]
    assert tags["version.cann"] == "not installed" and tags["host"]
    for name in ("matmul_ms_device", "matmul_ms_cpu", "device_mem_reserved_mb", "device_count"):
        assert name in metrics, name
    assert "matmul_speedup" not in metrics
    assert metrics["matmul_ms_cpu"] == metrics["matmul_ms_device"] > 0
    assert metrics["device_count"] == 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "hydra", "doctor.txt"} <= artifacts
    hydra_files = {a.path for a in client.list_artifacts(run.info.run_id, "hydra")}
    assert {"hydra/config.yaml", "hydra/overrides.yaml", "hydra/hydra.yaml"} <= hydra_files
    assert any(a.endswith(".log") for a in artifacts)


def test_tracking_off_records_nothing(run_cli, tmp_path):
    result = run_cli("task=doctor", "tracking=off", "doctor.matmul_size=64", timeout=120)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    assert list((tmp_path / "outputs" / "runs").glob("*/*/.hydra/config.yaml"))


def test_multirun_gives_parent_and_children(run_cli, tmp_path, mlflow_runs):
    result = run_cli("-m", "task=doctor", "doctor.matmul_size=64,128", "doctor.repeats=2", timeout=300)
    assert result.returncode == 0, result.stderr
    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
    assert sorted(c.data.params["doctor.matmul_size"] for c in children) == ["128", "64"]
    assert all(c.info.status == "FINISHED" for c in children)
    assert parent.data.tags["jobs_total"] == "2" and parent.data.tags["jobs_failed"] == "0"
    assert list((tmp_path / "outputs" / "multiruns").glob("*/*/0/.hydra"))


def test_failed_job_gives_failed_child_and_terminated_parent(run_cli, tmp_path, mlflow_runs):
    # device=cuda cannot be satisfied on a machine without a GPU: a real failure inside the job.
    result = run_cli("-m", "task=doctor", "device=cpu,cuda", "doctor.matmul_size=64", "doctor.repeats=2", timeout=300)
    # The sweep runs every job, then ends with the failed job's message alone and status 1.
    assert result.returncode == 1
    assert result.stderr.rstrip().splitlines()[-1].startswith("device=cuda is not usable here"), result.stderr
    assert "Traceback" not in result.stderr and HYDRA_HINT not in result.stderr
    client, runs = mlflow_runs(tmp_path)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = {r.data.params["device.name"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert children["cpu"].info.status == "FINISHED"
    assert children["cuda"].info.status == "FAILED"
    assert "device=cuda is not usable here" in children["cuda"].data.tags["error"]
    assert parent.info.status == "FAILED"
    assert parent.data.tags["jobs_failed"] == "1"


def test_an_in_process_run_prints_and_exits_as_a_fresh_process(run_cli, tmp_path):
    """The other CLI tests run the CLI inside pytest (tests/conftest.py): a sweep with a failed job (Hydra's
    logging, the user error's exit, the parent closed at exit) gives the same status and output as
    ``python -m ascend_lab.run``, run ids, paths and figures aside."""
    argv = ("-m", "task=doctor", "device=cpu,cuda", "doctor.matmul_size=64", "doctor.repeats=1")

    def masked(text: str) -> list[str]:
        return [" ".join(re.sub(r"[0-9a-f]{32}|/tmp/\S+|[\d.]+", "#", line).split()) for line in text.splitlines()]

    (tmp_path / "fresh").mkdir(), (tmp_path / "in_process").mkdir()
    fresh = run_cli(*argv, cwd=tmp_path / "fresh", subprocess=True)
    in_process = run_cli(*argv, cwd=tmp_path / "in_process")
    assert in_process.returncode == fresh.returncode == 1
    assert masked(in_process.stdout) == masked(fresh.stdout) and "Sweep recorded as MLflow run" in fresh.stdout
    assert masked(in_process.stderr) == masked(fresh.stderr)
