"""Telemetry during jobs (ascend_lab.telemetry): MLflow's system metrics with the NPU and RAPL monitors, the
energy of a benchmark's timed window, the cached bandwidth and the roofline, against the real MLflow store.

The NPU is the stand-in tests/fakes/bin/npu-smi (written from the hiascend npu-smi pages); RAPL is a powercap
tree built in a temporary folder, or an empty folder where a test needs the CPU's power unreadable.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FAKES, SMALL_BANDWIDTH, all_runs, cli_env, run_cli_in
from browser_helpers import free_port, shots_folder, wait_for_text

from ascend_lab.cann import npu_smi
from ascend_lab.bench import roofline, summary
from ascend_lab.bench.roofline import cached_bandwidth, generate_roofline
from ascend_lab.config import TelemetryConfig
from ascend_lab.errors import ConfigError
from ascend_lab.telemetry import THREAD_NAME, job_telemetry
from ascend_lab.telemetry.energy import (
    RaplReader, SourceEnergy, Window, WorkDevice, combine, physical_index, rapl_delta_uj, trapezoid_j,
)

FAST = ("benchmark.warmup=1", "benchmark.iterations=3", "benchmark.min_duration_s=0")
CPU_MONITOR_NAMES = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                     "system/system_memory_usage_percentage")
NPU_NAMES = ("system/npu_0_power_usage_watts", "system/npu_0_utilization_percentage",
             "system/npu_0_memory_usage_megabytes", "system/npu_0_temperature_celsius")


def sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def powercap(root: Path, packages: dict[int, tuple[int, int]]) -> Path:
    """A powercap tree: ``intel-rapl:<n>`` package domains (energy µJ, range µJ) and a core sub-domain each."""
    for n, (energy, max_range) in packages.items():
        domain = root / f"intel-rapl:{n}"
        domain.mkdir(parents=True)
        (domain / "name").write_text(f"package-{n}\n")
        (domain / "energy_uj").write_text(f"{energy}\n")
        (domain / "max_energy_range_uj").write_text(f"{max_range}\n")
        core = root / f"intel-rapl:{n}:0"
        core.mkdir()
        (core / "name").write_text("core\n")
        (core / "energy_uj").write_text("5\n")
    return root


@pytest.fixture
def npu_smi_on_path(monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}:{__import__('os').environ['PATH']}")
    return monkeypatch


# ------------------------------------------------------------------------------------------------ RAPL


def test_rapl_sums_the_packages_and_survives_a_wraparound(tmp_path):
    root = powercap(tmp_path / "powercap", {0: (1_000_000, 262_143_328_850), 1: (262_143_000_000, 262_143_328_850)})
    reader = RaplReader(root)
    assert reader.available and [d.name for d in reader.domains] == ["intel-rapl:0", "intel-rapl:1"]
    start = reader.read()
    (root / "intel-rapl:0" / "energy_uj").write_text("3000000\n")  # +2 J
    (root / "intel-rapl:1" / "energy_uj").write_text("671150\n")  # wrapped: +328 850 + 671 150 µJ = +1 J
    assert reader.joules(start, reader.read()) == pytest.approx(3.0)
    assert rapl_delta_uj(10, 4, 20) == 14 and rapl_delta_uj(4, 10, 20) == 6


def test_rapl_says_why_it_cannot_be_read(tmp_path, monkeypatch):
    assert "does not exist" in RaplReader(tmp_path / "missing").reason
    (tmp_path / "empty").mkdir()
    assert "no RAPL package domain" in RaplReader(tmp_path / "empty").reason
    root = powercap(tmp_path / "locked", {0: (1, 100)})
    real = Path.read_text

    def denied(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)
    reader = RaplReader(root)
    assert not reader.available and "not readable by this user" in reader.reason and "CVE-2020-8694" in reader.reason


# ------------------------------------------------------------------------------------------------ energy figures


def test_a_window_integrates_power_and_sums_its_sources():
    window = Window(t0=10.0, t1=12.0, samples=[(10.0, {"npu_0_power_usage_watts": 80.0}),
                                                (11.0, {"npu_0_power_usage_watts": 100.0, "cpu_package_power_watts": 20.0}),
                                                (12.0, {"npu_0_power_usage_watts": 80.0, "cpu_package_power_watts": 30.0})])
    npu = SourceEnergy("npu", trapezoid_j(window.series("npu_0_power_usage_watts")), "npu-smi", "npu_0_power_usage_watts")
    cpu = SourceEnergy("cpu", 50.0, "RAPL", "cpu_package_power_watts")
    assert npu.joules == pytest.approx(180.0)
    figures = combine(window, [npu, cpu], {}, tokens=23)
    m = figures.metrics
    assert m["energy_j"] == pytest.approx(230.0) and m["joules_per_token"] == pytest.approx(10.0)
    assert m["power_w_mean"] == pytest.approx(115.0) and m["power_w_max"] == pytest.approx(120.0)
    assert m["energy_j_npu"] == pytest.approx(180.0) and m["power_w_max_npu"] == 100.0
    assert figures.tags["energy.sources"].startswith("npu: npu-smi; cpu: RAPL")


def test_no_readable_source_gives_no_energy_figure_and_says_why():
    figures = combine(Window(t0=0.0, t1=1.0), [], {"cpu": "no RAPL counters", "npu": "power NA"}, tokens=10)
    assert not any(k.startswith(("energy", "joules", "power")) for k in figures.metrics)  # absent, never 0
    assert figures.tags["energy.cpu.absent"] == "no RAPL counters"
    assert figures.tags["energy.absent"] == "cpu: no RAPL counters; npu: power NA"


def test_visible_devices_map_to_the_host_wide_index(monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    assert physical_index(1, "ASCEND_RT_VISIBLE_DEVICES") == 5
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-3f2a")
    assert physical_index(0, "CUDA_VISIBLE_DEVICES") == 0  # UUIDs: NVML's own order is all there is


# ------------------------------------------------------------------------------------------------ npu-smi


def test_npu_smi_queries_read_the_documented_formats(npu_smi_on_path):
    npu_smi_on_path.setenv("FAKE_NPU_SMI_CHIPS", "2")
    overview = npu_smi.npu_smi_overview()
    assert overview.driver_version == "24.1.rc2" and overview.error is None
    assert [(c.npu_id, c.chip_id, c.name, c.health) for c in overview.chips] == [(0, 0, "910B3", "OK"),
                                                                                 (1, 0, "910B3", "OK")]
    chip = overview.chips[1]
    assert (chip.power_w, chip.temp_c, chip.hbm_used_mb, chip.hbm_total_mb) == (93.1, 40.0, 3379.0, 65536.0)
    for args in ((), (0,)):  # the all-chips form (an MCU block follows the chip's) and the -c form
        power, error = npu_smi.npu_smi_fields("power", 1, *args)
        assert error is None and npu_smi.field_number(power[0], "NPU Real-time Power(W)") == 93.1
        temp, _ = npu_smi.npu_smi_fields("temp", 1, *args)
        assert npu_smi.field_number(temp[0], "Temperature(C)") == 40.0  # spaces and case aside
    board, _ = npu_smi.npu_smi_fields("board", 0)
    assert board[0]["Firmware Version"] == "7.5.0.1.129"
    _, error = npu_smi.npu_smi_fields("power", 7)
    assert "exited with status 1" in error


def test_npu_monitor_uses_mlflow_gpu_names_with_npu_and_says_why_power_is_missing(npu_smi_on_path):
    from ascend_lab.telemetry.monitors import NpuMonitor

    npu_smi_on_path.setenv("FAKE_NPU_SMI_AICORE", "57")
    monitor = NpuMonitor(npu_smi.npu_smi_overview().chips, timeout_s=10)
    monitor.collect_metrics()
    assert monitor.aggregate_metrics() == {
        "npu_0_power_usage_watts": 93.1, "npu_0_utilization_percentage": 57.0,
        "npu_0_memory_usage_percentage": 5.0, "npu_0_memory_usage_megabytes": pytest.approx(65536 * 0.05, abs=0.1),
        "npu_0_temperature_celsius": 40.0}
    npu_smi_on_path.setenv("FAKE_NPU_SMI_POWER", "NA")
    monitor.clear_metrics()
    monitor.collect_metrics()
    assert "npu_0_power_usage_watts" not in monitor.aggregate_metrics()
    assert "printed no power figure for chip 0" in monitor.errors[0]


# ------------------------------------------------------------------------------------------------ the sampler


@pytest.fixture
def store_run(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("telemetry"))
    return client, run.info.run_id, uri


@pytest.mark.parametrize("ending", ["success", "exception", "keyboard interrupt"])
def test_the_sampler_runs_for_the_block_and_stops_however_it_ends(store_run, tmp_path, ending):
    client, run_id, uri = store_run
    cfg = TelemetryConfig(interval_s=0.05, rapl_root=str(tmp_path / "no-rapl"))
    raised = {"success": None, "exception": RuntimeError("the job failed"), "keyboard interrupt": KeyboardInterrupt()}
    try:
        with job_telemetry(cfg, run_id, uri) as session:
            assert session is not None and session.running and sampler_threads()
            threading.Event().wait(0.3)
            if raised[ending] is not None:
                raise raised[ending]
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert not sampler_threads() and not session.running
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2  # the thread's points, and the pending samples published when it stopped


def test_no_sampling_when_off_or_without_a_run(store_run):
    _, run_id, uri = store_run
    with job_telemetry(TelemetryConfig(enabled=False), run_id, uri) as session:
        assert session is None and not sampler_threads()
    with job_telemetry(TelemetryConfig(), None, uri) as session:
        assert session is None


@pytest.mark.parametrize("option", ["default", "off"])
def test_telemetry_options_compose_and_every_field_is_documented(compose, option):
    import dataclasses

    from ascend_lab.config import validate

    telemetry = validate(compose(f"telemetry={option}")).telemetry
    assert telemetry.enabled is telemetry.roofline is (option == "default")
    assert all(f.metadata.get("help") for f in dataclasses.fields(TelemetryConfig))


def test_config_rejects_a_zero_interval():
    with pytest.raises(ConfigError, match="telemetry.interval_s=0"):
        TelemetryConfig(interval_s=0)
    with pytest.raises(ConfigError, match="telemetry.bandwidth_array_gb"):
        TelemetryConfig(bandwidth_array_gb=float("nan"))


def test_a_failing_job_stops_its_sampler_and_still_has_curves(compose, monkeypatch, tmp_path):
    """In process, the real job lifecycle: runtime=acl with a pyACL that is found but does not load fails inside
    the job after the run opened."""
    from ascend_lab import preflight
    from ascend_lab.errors import ToolchainError
    from ascend_lab.run import run_job

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(preflight, "module_found", lambda name: True)
    cfg = compose("task=bench", "runtime=acl", "telemetry.interval_s=0.1", f"telemetry.rapl_root={tmp_path}/none")
    with pytest.raises(ToolchainError):
        run_job(cfg)
    assert not sampler_threads()
    client, (run,) = all_runs(tmp_path)
    assert run.info.status == "FAILED"
    assert client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert "environment.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


# ------------------------------------------------------------------------------------------------ bandwidth, roofline


def fake_bandwidth(calls: list):
    def measure(gb, repeats, threads=None):
        calls.append(gb)
        return roofline.Bandwidth(gb_s=40.0, counts="read", by_kernel={"sum_1t": 40.0}, copy_rw_gb_s=30.0, array_gb=gb,
                                  threads=1, repeats=repeats)
    return measure


def test_bandwidth_is_measured_once_per_host_and_device_and_a_bad_cache_is_measured_again(tmp_path, monkeypatch,
                                                                                          caplog):
    calls: list = []
    monkeypatch.setattr(roofline, "measure_read_bandwidth", fake_bandwidth(calls))
    cfg, work = TelemetryConfig(bandwidth_array_gb=1.5), WorkDevice("cpu", 0, "test")
    record, path, hit = cached_bandwidth(cfg, tmp_path, work, None)
    assert not hit and record["gb_s"] == 40.0 and calls == [1.5]
    assert cached_bandwidth(cfg, tmp_path, work, None)[2] and calls == [1.5]  # cached: not measured again
    for damage in ("{not json", json.dumps({**record, "gb_s": -1}), json.dumps({**record, "host": "elsewhere"})):
        path.write_text(damage)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert not cached_bandwidth(cfg, tmp_path, work, None)[2]
        assert "is invalid" in caplog.text and "measuring the bandwidth again" in caplog.text
    assert len(calls) == 4 and json.loads(path.read_text())["gb_s"] == 40.0


def test_the_device_bandwidth_kernels_run_and_release_what_they_take(monkeypatch):
    """torch's path (run on torch.cpu here: the CUDA/NPU code is the same) and pyACL's device-to-device copy on
    the simulator, which must see every allocation, context and device released."""
    import sys

    import torch

    from ascend_lab.runtimes.acl import pyacl

    on_torch = roofline.measure_torch_read_bandwidth(torch.device("cpu"), gb=0.01, repeats=2)
    assert on_torch.gb_s > 0 and on_torch.counts == "read" and set(on_torch.by_kernel) == {"sum_device", "max_device"}
    monkeypatch.syspath_prepend(str(FAKES / "pyacl"))
    for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
        monkeypatch.delitem(sys.modules, name)
    import acl

    try:
        acl._sim.reset()
        on_acl = roofline.measure_acl_d2d_bandwidth(0, gb=0.01, repeats=2)
        assert on_acl.gb_s == on_acl.copy_rw_gb_s > 0 and "device-to-device" in on_acl.method
        assert on_acl.counts == "copy" and on_acl.metric == "roofline_copy_gb_s"  # a copy is not a read figure
        assert acl._sim.leaks() == [] and pyacl._init_users == 0
    finally:  # later tests must not find the simulator importable as `acl`
        for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
            del sys.modules[name]


def test_generate_roofline_counts_weights_and_the_kv_cache_at_each_length(tmp_path, monkeypatch):
    monkeypatch.setattr(roofline, "measure_read_bandwidth", fake_bandwidth([]))
    contract = SimpleNamespace(dtype="float16", slot_elements=lambda batch: batch * 1000)
    figures = generate_roofline(TelemetryConfig(), tmp_path, WorkDevice("cpu", 0, "test"), None, contract, batch=4,
                                prompt_len=16, new_tokens=9, weight_bytes=10_000_000, weights_from="test",
                                decode_tokens_s=1000.0)
    # Decode steps attend to 17 … 24 positions (mean 20.5): 4 × 1000 elements × 2 bytes per position.
    step = 10_000_000 + 8000 * 20.5
    assert figures.metrics["roofline_step_bytes"] == pytest.approx(step)
    assert figures.metrics["roofline_tokens_s"] == pytest.approx(4 * 40e9 / step)
    assert figures.metrics["roofline_fraction"] == pytest.approx(1000.0 / (4 * 40e9 / step))
    assert figures.metrics["roofline_read_gb_s"] == 40.0 and "roofline_copy_gb_s" not in figures.metrics
    assert figures.tags["roofline.weights"] == "test" and "GB/s" in figures.tags["roofline.bandwidth"]
    none = generate_roofline(TelemetryConfig(), tmp_path, WorkDevice("cpu", 0, "t"), None, contract, 1, 16, 1, 1, "t", None)
    assert not none.metrics and "no decode step" in none.tags["roofline.absent"]


# ------------------------------------------------------------------------------------------------ the summary


def test_summary_shows_j_per_token_peak_memory_and_the_roofline_fraction_and_plots_energy(tmp_path):
    rows = [summary.Row(batch_size=b, runtime="onnxruntime", scenario="generate", model="tiny_qwen",
                        metrics={"e2e_ms_mean": 10.0 * b, "throughput_tokens_s": 100.0 * b, "decode_tokens_s": 90.0 * b,
                                 "roofline_fraction": 0.1 * b, "joules_per_token": 2.0 / b, "peak_memory_mb": 700.0 + b})
            for b in (1, 4)]
    headers, cells = summary.table(rows, [])
    assert {"J/token", "peak memory (MB)", "roofline fraction"} <= set(headers)
    assert headers.index("roofline fraction") == headers.index("decode (tokens/s)") + 1
    figure = summary.plot(rows)
    assert [ax.get_title() for ax in figure.axes] == ["throughput", "mean latency", "throughput against energy"]
    no_power = [summary.Row(1, "onnxruntime", "generate", "tiny_qwen", {"e2e_ms_mean": 1.0, "throughput_tokens_s": 1.0})]
    assert "J/token" not in summary.table(no_power, [])[0] and len(summary.plot(no_power).axes) == 2


# ------------------------------------------------------------------------------------------------ the real CLI


def bench_run(run_cli, tmp_path, mlflow_runs, export_cache, *overrides, env=None):
    proc = run_cli("task=bench", "runtime=onnxruntime", export_cache, SMALL_BANDWIDTH, "telemetry.interval_s=0.5",
                   f"telemetry.rapl_root={tmp_path / 'no-rapl'}", *overrides, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, runs = mlflow_runs(tmp_path)
    (run,) = runs
    assert run.info.status == "FINISHED"
    return proc, client, run


@pytest.mark.slow
def test_a_cpu_bench_job_logs_system_metrics_roofline_and_its_environment(run_cli, mlflow_runs, tmp_path, export_cache):
    proc, client, run = bench_run(run_cli, tmp_path, mlflow_runs, export_cache, *FAST)
    for name in CPU_MONITOR_NAMES:  # MLflow's own CPU monitor, sampled into the job's run
        assert client.get_metric_history(run.info.run_id, name), name
    m, tags = run.data.metrics, run.data.tags
    # This host's power source is unreadable: no energy figure (never 0) and the reason as a tag.
    assert not {"energy_j", "joules_per_token", "power_w_mean"} & set(m)
    assert "RAPL" in tags["energy.cpu.absent"] and tags["energy.absent"].startswith("cpu: ")
    assert m["roofline_tokens_s"] > 0 and 0 < m["roofline_fraction"] == pytest.approx(
        m["decode_tokens_s"] / m["roofline_tokens_s"])
    assert tags["roofline.bandwidth_fits"] == "false"  # a 0.02 GB array is a cache's bandwidth, and says so
    assert m["peak_memory_mb"] == m["host_peak_rss_mb"] and tags["telemetry.work_device"] == "cpu:0"
    assert "environment.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert list((tmp_path / "outputs" / "bandwidth").glob("*.json"))
    assert "roofline_fraction" in proc.stdout


@pytest.fixture(scope="module")
def npu_bench(tmp_path_factory, export_cache):
    """(launch dir, client, run) of one CPU bench job with the npu-smi stand-in on PATH drawing a constant 80 W."""
    launch = tmp_path_factory.mktemp("npu_bench")
    env = cli_env([FAKES / "bin"])
    env["FAKE_NPU_SMI_POWER"] = "80"
    proc = run_cli_in(launch, "task=bench", "runtime=onnxruntime", export_cache, SMALL_BANDWIDTH,
                      "telemetry.interval_s=0.5", f"telemetry.rapl_root={launch / 'no-rapl'}", "benchmark.warmup=1",
                      "benchmark.iterations=3", "benchmark.min_duration_s=1.5", "benchmark.new_tokens=8", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    client, (run,) = all_runs(launch)
    assert run.info.status == "FINISHED"
    return launch, client, run


@pytest.mark.slow
def test_with_the_npu_smi_stand_in_the_npu_monitor_logs_curves_and_joules_per_token(npu_bench):
    _, client, run = npu_bench
    for name in NPU_NAMES:
        assert client.get_metric_history(run.info.run_id, name), name
    assert {p.value for p in client.get_metric_history(run.info.run_id, "system/npu_0_power_usage_watts")} == {80.0}
    m, tags = run.data.metrics, run.data.tags
    # A CPU job on a host with an NPU counts the NPU: a constant 80 W over the timed window.
    assert m["energy_j"] / m["energy_window_s"] == pytest.approx(80.0, rel=1e-6)
    assert m["joules_per_token"] == pytest.approx(m["energy_j"] / (1 * 8 * m["iterations"]))
    assert m["power_w_max"] == 80.0 and tags["energy.sources"].startswith("npu: npu-smi power of npu_0")
    assert "RAPL" in tags["energy.cpu.absent"] and "energy.absent" not in tags


@pytest.mark.slow
def test_the_system_metrics_tab_shows_the_npu_and_cpu_curves_in_a_real_browser(npu_bench, browser, tmp_path):
    """`mlflow ui` on the job's store, the run's "System metrics" tab in Chromium (skipped without one)."""
    launch, _, run = npu_bench
    port = free_port()
    with (tmp_path / "mlflow-ui.log").open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
                                   "sqlite:///outputs/mlflow.db", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1"], cwd=launch, stdout=log, stderr=subprocess.STDOUT)
        try:
            address = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "mlflow-ui.log").read_text()
                try:
                    with urllib.request.urlopen(address + "/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    time.sleep(0.5)
            browser.get(f"{address}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/system-metrics")
            assert "cpu_utilization_percentage" in wait_for_text(browser, "cpu_utilization_percentage")
            # Charts below the fold are drawn when scrolled to; the tab's search shows the NPU's at the top.
            from selenium.webdriver.common.by import By

            browser.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']").send_keys("npu_0")
            text = wait_for_text(browser, "npu_0_power_usage_watts")
            browser.save_screenshot(str(shots_folder(tmp_path) / "system_metrics_npu.png"))
        finally:
            server.terminate()
            server.wait(timeout=20)
    for name in ("npu_0_utilization_percentage", "npu_0_memory_usage_megabytes", "npu_0_temperature_celsius"):
        assert name in text, name


@pytest.mark.slow
def test_an_unreadable_npu_power_gives_no_energy_figure_and_the_reason(run_cli, mlflow_runs, tmp_path, export_cache):
    env = cli_env([FAKES / "bin"])
    env["FAKE_NPU_SMI_POWER"] = "NA"
    _, client, run = bench_run(run_cli, tmp_path, mlflow_runs, export_cache, *FAST, "benchmark.new_tokens=4", env=env)
    m, tags = run.data.metrics, run.data.tags
    assert not {"energy_j", "joules_per_token", "energy_j_npu"} & set(m)
    assert "printed no power figure for chip 0" in tags["energy.npu.absent"]
    assert tags["energy.absent"].startswith("cpu: ") and "npu: " in tags["energy.absent"]
    assert client.get_metric_history(run.info.run_id, "system/npu_0_utilization_percentage")  # the rest is sampled


@pytest.mark.slow
def test_telemetry_off_samples_nothing_but_the_environment_is_still_recorded(run_cli, mlflow_runs, tmp_path):
    proc = run_cli("task=doctor", "doctor.matmul_size=64", "doctor.repeats=2", "telemetry=off")
    assert proc.returncode == 0, proc.stderr
    client, (run,) = mlflow_runs(tmp_path)
    assert not [k for k in run.data.metrics if k.startswith("system/")]
    assert "environment.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
