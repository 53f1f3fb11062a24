"""The environment a run ran in (environment.json), task=doctor's diff against another run or file
(doctor.compare_to), the torch ↔ torch_npu ↔ CANN pairing check and the npu-smi board table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import FAKES, cli_env

from ascend_lab.errors import ConfigError
from ascend_lab.telemetry import environment
from ascend_lab.telemetry.pairing import check_pairing, compatibility_table

DOCTOR = ("task=doctor", "doctor.matmul_size=64", "doctor.repeats=2", "telemetry=off")
EDITS = {("toolchain", "cann_version"): "8.0.RC2", ("python_packages", "torch"): "2.1.0",
         ("hardware", "cpu_model"): "HiSilicon Kunpeng-920"}


def edited(snapshot: dict) -> dict:
    copied = copy.deepcopy(snapshot)
    for (group, field), value in EDITS.items():
        copied[group][field] = value
    return copied


# ------------------------------------------------------------------------------------------------ snapshot and diff


def test_the_snapshot_has_every_group_and_the_ascend_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/local/Ascend/driver/lib64:/opt/other/lib")
    snapshot = environment.environment_snapshot(tmp_path)
    assert set(environment.GROUPS) <= set(snapshot) and snapshot["schema"] == environment.SCHEMA
    toolchain = snapshot["toolchain"]
    assert toolchain["environment"]["ASCEND_RT_VISIBLE_DEVICES"] == "0,1"
    assert toolchain["ld_library_path_ascend"] == ["/usr/local/Ascend/driver/lib64"]
    assert len(toolchain["git_commit"]) == 40
    assert {"python", "torch", "torch_npu", "transformers", "onnx", "onnxruntime", "mlflow", "hydra-core"} \
        == set(snapshot["python_packages"])
    assert snapshot["hardware"]["cpu_cores_logical"] >= 1 and snapshot["hardware"]["memory_total_gb"] > 0
    assert snapshot["driver"] == {"npu_smi": "not found"}


def test_the_driver_group_comes_from_npu_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_NPU_SMI_HEALTH", "Warning")
    driver = environment.environment_snapshot(tmp_path)["driver"]
    assert driver["driver_version"] == "24.1.rc2" and driver["firmware"] == {"npu_0": "7.5.0.1.129"}
    assert driver["chips"]["npu_0"]["name"] == "910B3" and driver["chips"]["npu_0"]["health"] == "Warning"


def test_the_diff_reports_exactly_the_edited_fields_by_group_and_marks_those_that_change_results(tmp_path):
    here = environment.environment_snapshot(tmp_path)
    there = edited(here)
    there["captured"] = {"host": "another", "at": "yesterday"}  # context, never a difference
    differences = environment.diff_snapshots(here, there)
    assert [(d.group, d.field) for d in differences] == [("toolchain", "cann_version"), ("python_packages", "torch"),
                                                          ("hardware", "cpu_model")]
    assert {d.key: d.changes_results for d in differences} == {"toolchain.cann_version": True,
                                                               "python_packages.torch": True,
                                                               "hardware.cpu_model": False}
    text = environment.diff_text(differences, "ref")
    assert "3 difference(s)" in text and "* cann_version" in text and "  cpu_model" in text
    assert environment.diff_snapshots(here, copy.deepcopy(here)) == []


@pytest.mark.parametrize("content, problem", [
    ("{ not json", "is not valid JSON"),
    ('{"schema": 1, "whatever": 2}', "is not an environment.json"),
    ("[1, 2]", "is not an environment.json"),
])
def test_a_malformed_reference_file_is_a_clear_error_naming_the_key(tmp_path, content, problem):
    (tmp_path / "env.json").write_text(content)
    with pytest.raises(ConfigError, match=f"doctor.compare_to='env.json'.*{problem}"):
        environment.load_reference("env.json", tmp_path / "env.json", "sqlite:///unused.db")


def test_a_missing_file_or_unknown_run_id_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="doctor.compare_to='gone/environment.json': no such file"):
        environment.load_reference("gone/environment.json", tmp_path / "gone/environment.json",
                                   "sqlite:///unused.db")
    with pytest.raises(ConfigError, match="no MLflow store at"):
        environment.load_reference("0123abcd", tmp_path / "0123abcd", f"sqlite:///{tmp_path / 'none.db'}")


# ------------------------------------------------------------------------------------------------ pairing


def test_the_pairing_table_is_packaged_data_with_its_source():
    source, rows = compatibility_table()
    assert source["url"].startswith("https://github.com/Ascend/pytorch/blob/") and len(source["file_commit"]) == 40
    assert any(r.torch_npu == "2.1.0.post10" and r.torch == "2.1.0" and r.cann == "8.0.0" for r in rows)


def test_a_published_triple_passes_and_an_off_one_names_what_matches():
    assert check_pairing("2.1.0+cpu", "2.1.0.post10", "8.0.0").status == "ok"
    assert check_pairing("2.1.0", "2.1.0.post6", "8.0.RC2.alpha003").status == "ok"  # a CANN build of that release
    off = check_pairing("2.4.0", "2.1.0.post10", "8.0.RC2")
    assert off.status == "mismatch"
    assert "built for torch 2.1.0, not torch 2.4.0" in off.message and "not CANN 8.0.RC2" in off.message
    assert "for torch 2.4.0: torch_npu 2.4.0.post4 with CANN 8.1.RC1" in off.message
    assert "for CANN 8.0.RC2: torch 2.3.1 with torch_npu 2.3.1" in off.message
    assert "CANN is not installed" in check_pairing("2.1.0", "2.1.0.post10", None).message
    assert check_pairing("2.14.1", "not installed", None).status == "not applicable"
    assert check_pairing("2.9.0", "2.9.0.dev20990101", "9.1.0").status == "unknown"


# ------------------------------------------------------------------------------------------------ the real CLI


def snapshot_of(client, run_id: str, folder: Path) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, environment.ARTIFACT, str(folder))).read_text())


@pytest.mark.slow
def test_doctor_compare_to_reports_exactly_the_edited_fields(run_cli, mlflow_runs, tmp_path):
    first = run_cli(*DOCTOR)
    assert first.returncode == 0, first.stderr
    client, (run,) = mlflow_runs(tmp_path)
    reference = snapshot_of(client, run.info.run_id, tmp_path / "download")
    (tmp_path / "edited.json").write_text(json.dumps(edited(reference)))

    proc = run_cli(*DOCTOR, "doctor.compare_to=edited.json")
    assert proc.returncode == 0, proc.stderr
    assert "3 difference(s) between this host and" in proc.stdout and "* cann_version" in proc.stdout
    client, runs = mlflow_runs(tmp_path)
    latest = max(runs, key=lambda r: r.info.start_time)
    record = json.loads(Path(client.download_artifacts(latest.info.run_id, "environment_diff.json",
                                                       str(tmp_path / "diff"))).read_text())
    assert {d["key"]: d["changes_results"] for d in record["differences"]} == {
        "toolchain.cann_version": True, "python_packages.torch": True, "hardware.cpu_model": False}
    assert latest.data.tags["doctor.environment_differences"] == "3"

    same = run_cli(*DOCTOR, f"doctor.compare_to={run.info.run_id}")
    assert same.returncode == 0, same.stderr
    assert f"no difference between this host and run {run.info.run_id}" in same.stdout


@pytest.mark.slow
@pytest.mark.parametrize("reference, message", [
    ("0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f", "no MLflow run with this id"),
    ("broken.json", "is not valid JSON"),
    ("missing/environment.json", "no such file"),
])
def test_doctor_compare_to_an_unknown_run_or_a_bad_file_fails_clearly(run_cli, tmp_path, reference, message):
    (tmp_path / "broken.json").write_text("{ this is not json")
    proc = run_cli("task=doctor", "doctor.matmul_size=64", "telemetry=off", f"doctor.compare_to={reference}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"Invalid config: doctor.compare_to='{reference}'") and message in last, proc.stderr
    if reference.endswith(".json"):  # a file is read before the store is created; a run id needs the store
        assert not (tmp_path / "outputs" / "mlflow.db").exists()


@pytest.mark.slow
def test_doctor_shows_the_npu_smi_board_and_the_pairing(run_cli, tmp_path):
    env = cli_env([FAKES / "bin"])
    env["FAKE_NPU_SMI_POWER"] = "88.5"
    proc = run_cli(*DOCTOR, "tracking=off", env=env)
    assert proc.returncode == 0, proc.stderr
    board = proc.stdout[proc.stdout.index("npu-smi board (driver 24.1.rc2)"):]
    assert "| 0/0      | 910B3 | OK     | 88.50     | 40.00    | 3,379 / 65,536  |" in board
    assert "torch ↔ torch_npu ↔ CANN" in proc.stdout and "not applicable" in proc.stdout
