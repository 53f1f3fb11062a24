"""profile=on: the profiled pass after the timed one, on every runtime, into one operator table.

- the table, its shares and the interval arithmetic, on hand-made events;
- each parser on its format (torch's Chrome trace on the CPU and, hand-written from Kineto's format, CUDA; msprof's
  op_summary and torch_npu's kernel_details);
- a profiled task=bench on torch and on onnxruntime (CPU) through the CLI, as one sweep: a trace that parses again,
  ops.csv whose shares sum to 100 %, the chart, the top-10 table on the console, under profile/ in MLflow, and the
  runtimes' shares side by side in the sweep summary; task=infer too;
- the profiled pass's latency is logged apart (profile_* names) and the timed figures are final before it starts;
- pyACL through the simulator: the profiling API's calls in their documented order, every profiling resource
  released, also when a step fails.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ascend_lab.config.profile import ProfileConfig
from ascend_lab.profiling import msprof
from ascend_lab.profiling.events import (COMPUTE, COPY, DECODE, MSPROF, PREFILL, OpEvent, TraceFile, busy_and_span,
                                         range_name)
from ascend_lab.profiling.profiled_pass import parse_traces
from ascend_lab.profiling.table import OpTable
from ascend_lab.runtimes.onnxruntime import trace as ort_trace
from ascend_lab.runtimes.torch import trace as torch_trace

from conftest import FAKES  # noqa: E402
FAST = ("benchmark.warmup=1", "benchmark.iterations=2", "benchmark.min_duration_s=0", "benchmark.new_tokens=8",
        "telemetry=off")


# ------------------------------------------------------------------------------------------------ the table

def test_table_shares_sum_to_one_and_copies_and_gaps_are_their_own_figures():
    events = [OpEvent("MatMul", COMPUTE, 0, 60, PREFILL), OpEvent("Add", COMPUTE, 60, 20, PREFILL),
              OpEvent("Memcpy HtoD", COPY, 100, 20, PREFILL),  # 20 µs gap before it
              OpEvent("MatMul", COMPUTE, 1000, 10, DECODE), OpEvent("MatMul", COMPUTE, 1030, 10, DECODE)]
    table = OpTable.from_events(events)
    assert [r.op for r in table.rows] == ["MatMul", "Add", "Memcpy HtoD"]
    assert sum(table.share(r) for r in table.rows) == pytest.approx(1.0)
    for phase in table.phases:
        assert sum(table.share(r, phase) for r in table.rows) == pytest.approx(1.0)
    m = table.metrics()
    assert m["profile_top_op_share"] == pytest.approx(80 / 120)
    assert m["profile_copy_share"] == pytest.approx(20 / 120)
    assert m["profile_prefill_idle_share"] == pytest.approx(20 / 120)  # span 0..120, busy 100
    assert m["profile_decode_idle_share"] == pytest.approx(20 / 40)  # span 1000..1040, busy 20
    assert m["profile_idle_share"] == pytest.approx(40 / 160)
    rows = list(csv.DictReader(table.csv_text().splitlines()))
    assert [r["op_type"] for r in rows] == ["MatMul", "Add", "Memcpy HtoD"]
    assert sum(float(r["share_pct"]) for r in rows) == pytest.approx(100.0, abs=1e-3)
    assert rows[0]["calls"] == "3" and float(rows[0]["mean_us"]) == pytest.approx(80 / 3, abs=1e-3)
    assert "top operator 66.7 %" in table.console(10, "t")


def test_busy_time_is_the_union_of_intervals_and_untimed_work_is_kept_apart():
    nested = [OpEvent("outer", COMPUTE, 0, 5, "x", wall_us=100), OpEvent("inner", COMPUTE, 10, 50, "x"),
              OpEvent("late", COMPUTE, 150, 50, "x"), OpEvent("copy", COPY, math.nan, 7, "x")]
    assert busy_and_span(nested) == (150.0, 200.0, 7.0)


# ------------------------------------------------------------------------------------------------ parsers

def test_torch_cpu_trace_gives_self_time_and_phases_from_ranges(tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(2, 32)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function(range_name(PREFILL)), torch.inference_mode():
            model(x)
        with torch.profiler.record_function(range_name(DECODE)), torch.inference_mode():
            model(x)
            model(x)
    path = tmp_path / "t.pt.trace.json"
    prof.export_chrome_trace(str(path))
    parsed = torch_trace.parse(TraceFile(path, "torch"))
    phases = {e.phase for e in parsed.events}
    assert phases == {PREFILL, DECODE}
    addmm = [e for e in parsed.events if e.op == "aten::addmm"]
    assert len([e for e in addmm if e.phase == DECODE]) == 2 * len([e for e in addmm if e.phase == PREFILL])
    linear = [e for e in parsed.events if e.op == "aten::linear"]
    assert all(e.dur_us <= e.wall_us for e in linear)  # self time excludes the nested addmm
    busy, span, _ = busy_and_span([e for e in parsed.events if e.phase == PREFILL])
    self_total = sum(e.dur_us for e in parsed.events if e.phase == PREFILL)
    assert self_total == pytest.approx(busy, rel=0.05)  # self times add up to the busy time once


def test_torch_cuda_trace_attributes_kernels_to_the_launching_operator(tmp_path):
    """A trace in Kineto's CUDA form (categories cpu_op, cuda_runtime, kernel, gpu_memcpy, gpu_user_annotation,
    linked by args.correlation), as torch.profiler exports it with ProfilerActivity.CUDA."""
    events = [
        {"ph": "X", "cat": "user_annotation", "name": range_name(DECODE), "pid": 1, "tid": 1, "ts": 0, "dur": 100},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 10, "dur": 20},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 12, "dur": 3,
         "args": {"correlation": 7}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpyAsync", "pid": 1, "tid": 1, "ts": 40, "dur": 3,
         "args": {"correlation": 8}},
        {"ph": "X", "cat": "gpu_user_annotation", "name": range_name(DECODE), "pid": 0, "tid": 7, "ts": 15,
         "dur": 80},
        {"ph": "X", "cat": "kernel", "name": "ampere_sgemm_128x64_nn", "pid": 0, "tid": 7, "ts": 20, "dur": 30,
         "args": {"correlation": 7}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pageable)", "pid": 0, "tid": 7, "ts": 60,
         "dur": 10, "args": {"correlation": 8}},
    ]
    path = tmp_path / "cuda.json"
    path.write_text(json.dumps({"traceEvents": events}))
    parsed = torch_trace.parse(TraceFile(path, "torch"))
    by_op = {e.op: e for e in parsed.events}
    assert set(by_op) == {"aten::mm", "Memcpy DtoH"}
    assert by_op["aten::mm"].kind == COMPUTE and by_op["Memcpy DtoH"].kind == COPY
    assert {e.phase for e in parsed.events} == {DECODE}
    assert OpTable.from_events(parsed.events).metrics()["profile_copy_share"] == pytest.approx(0.25)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_msprof_op_summary_and_torch_npu_kernel_details(tmp_path):
    """Column names from the CANN profiling pages (op_summary: atlasprofiling_16_0067; api_statistic: _0063) and
    the Ascend PyTorch Profiler's kernel_details.csv."""
    out = tmp_path / "acl" / "PROF_000001_1_X" / "mindstudio_profiler_output"
    write_csv(out / "op_summary_1.csv", ["Device_id", "Op Name", "OP Type", "Task Type", "Task Start Time(us)",
                                         "Task Duration(us)", "Task Wait Time(us)"],
              [[0, "mm1", "MatMulV2", "AI_CORE", "100.0", "30.0", "0"],
               [0, "add", "Add", "AI_VECTOR_CORE", "140.0", "10.0", "10"]])
    write_csv(out / "api_statistic_1.csv", ["Device_id", "Level", "API Name", "Time(us)", "Count", "Avg(us)",
                                            "Min(us)", "Max(us)", "Variance"],
              [[0, "AscendCL", "aclrtMemcpy", "20", "4", "5", "4", "6", "1"],
               [0, "AscendCL", "aclmdlExecute", "45", "1", "45", "45", "45", "0"]])
    parsed = msprof.parse(TraceFile(tmp_path / "acl", MSPROF, phase=DECODE))
    table = OpTable.from_events(parsed.events)
    assert [(r.op, r.kind, r.calls) for r in table.rows] == [("MatMulV2", COMPUTE, 1), ("aclrtMemcpy", COPY, 4),
                                                              ("Add", COMPUTE, 1)]
    m = table.metrics()
    assert m["profile_copy_share"] == pytest.approx(20 / 60)
    assert m["profile_idle_share"] == 0  # the 10 µs gap is taken by the untimed copies (20 µs)

    npu = tmp_path / "npu" / "x_ascend_pt" / "ASCEND_PROFILER_OUTPUT"
    write_csv(npu / "kernel_details.csv", ["Step Id", "Name", "Type", "Accelerator Core", "Start Time(us)",
                                           "Duration(us)", "Wait Time(us)"],
              [[1, "mm", "MatMulV2", "AI_CORE", "0", "8", "0"],
               [1, "cp", "MemcpyAsync", "MEMCPY_ASYNC", "10", "2", "2"]])
    parsed = msprof.parse(TraceFile(tmp_path / "npu", MSPROF, phase=PREFILL))
    assert [(e.op, e.kind) for e in parsed.events] == [("MatMulV2", COMPUTE), ("MemcpyAsync", COPY)]


def test_raw_pyacl_data_is_exported_with_msprof_or_noted(tmp_path):
    (tmp_path / "PROF_000001_2_Y" / "device_0" / "data").mkdir(parents=True)
    parsed = msprof.parse(TraceFile(tmp_path, MSPROF, phase=DECODE))
    assert parsed.events == [] and "msprof --export=on" in parsed.notes[0]
    exported = []

    def exporter(session: Path) -> None:
        exported.append(session.name)
        write_csv(session / "mindstudio_profiler_output" / "op_summary_2.csv",
                  ["OP Type", "Task Type", "Task Start Time(us)", "Task Duration(us)"], [["Add", "AI_CORE", "1", "2"]])

    parsed = msprof.parse(TraceFile(tmp_path, MSPROF, phase=DECODE), exporter)
    assert exported == ["PROF_000001_2_Y"] and [e.op for e in parsed.events] == ["Add"]


def test_onnxruntime_profile_phases_come_from_the_host_clock(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ascend_lab.profiling.events import WallClockPhases

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["t"]), helper.make_node("Relu", ["t"], ["y"])],
                              "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "ort")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    clock, feed = WallClockPhases(), {"x": np.ones((8, 8), np.float32)}
    with clock.phase(PREFILL):
        session.run(None, feed)
    with clock.phase(DECODE):
        for _ in range(3):
            session.run(None, feed)
    origin = session.get_profiling_start_time_ns()
    trace = TraceFile(Path(session.end_profiling()), "onnxruntime", marks=tuple(clock.marks), origin_ns=origin)
    parsed = ort_trace.parse(trace)
    counts = {(e.op, e.phase) for e in parsed.events}
    assert counts == {("MatMul", PREFILL), ("Relu", PREFILL), ("MatMul", DECODE), ("Relu", DECODE)}
    assert sum(1 for e in parsed.events if e.phase == DECODE) == 6


def test_profile_config_validation():
    from ascend_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="profile.aic_metrics"):
        ProfileConfig(aic_metrics="Pipe")
    with pytest.raises(ConfigError, match="profile.torch_npu_level"):
        ProfileConfig(torch_npu_level="Level3")
    with pytest.raises(ConfigError, match="profile.steps"):
        ProfileConfig(steps=0)


# ------------------------------------------------------------------------------------------------ measurement

def test_profiled_latency_is_logged_apart_and_the_timed_figures_come_first(tmp_path, monkeypatch):
    """In-process task=bench on onnxruntime: the scenario returns its figures before the profiler starts, the
    logged timed figures are exactly the scenario's, and every figure of the profiled pass is a profile_* one."""
    from ascend_lab.config import AppConfig
    from ascend_lab.config.benchmark import BenchmarkConfig
    from ascend_lab.config.telemetry import TelemetryConfig
    from ascend_lab.context import JobContext
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime
    from ascend_lab.tasks import bench as bench_task
    from ascend_lab.tracking import Tracker

    order, scenario_metrics = [], {}
    real_generate, real_profiled = bench_task.run_generate, OnnxRuntime.profiled

    def run_generate(*args, **kwargs):
        result = real_generate(*args, **kwargs)
        scenario_metrics.update(result.metrics)
        order.append("timed figures")
        return result

    def profiled(self, out_dir, settings):
        order.append("profiler started")
        return real_profiled(self, out_dir, settings)

    class Recorder(Tracker):
        def __init__(self):
            self.metrics = {}

        def log_metrics(self, metrics, step=None):
            self.metrics.update(metrics)

    monkeypatch.setattr(bench_task, "run_generate", run_generate)
    monkeypatch.setattr(OnnxRuntime, "profiled", profiled)
    from ascend_lab.runtimes.onnxruntime.config import OnnxRuntimeConfig

    cfg = AppConfig(runtime=OnnxRuntimeConfig(), profile=ProfileConfig(enabled=True),
                    telemetry=TelemetryConfig(enabled=False, roofline=False),
                    benchmark=BenchmarkConfig(new_tokens=6, warmup=1, iterations=2, min_duration_s=0))
    tracker = Recorder()
    row = bench_task.run(cfg, JobContext(cfg, tracker, tmp_path, tmp_path))
    assert order == ["timed figures", "profiler started"]
    for key, value in scenario_metrics.items():
        assert tracker.metrics[key] == value, key  # the timed figures, untouched by the profiled pass
    profiled_keys = set(tracker.metrics) - set(scenario_metrics)
    latency = {k for k in profiled_keys if k.endswith(("_ms_mean", "_ms_p50", "_ms_p99"))}
    assert latency >= {"profile_prefill_ms_mean", "profile_tpot_ms_mean"}
    assert all(k.startswith("profile_") for k in latency)
    assert row.metrics["profile_top_op_share"] > 0
    assert (tmp_path / "profile" / "ops.csv").is_file() and (tmp_path / "profile" / "ops.png").is_file()


# ------------------------------------------------------------------------------------------------ the CLI

def check_profile_artifacts(client, run, tmp_path: Path, trace_format: str) -> list[dict]:
    """ops.csv (shares summing to 100 %), the chart and a trace that parses again, under profile/ in MLflow."""
    names = {a.path for a in client.list_artifacts(run.info.run_id, "profile")}
    assert {"profile/ops.csv", "profile/ops.png", "profile/ops.txt", "profile/traces"} <= names
    (tmp_path / "download").mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(run.info.run_id, "profile", str(tmp_path / "download")))
    rows = list(csv.DictReader((local / "ops.csv").read_text().splitlines()))
    assert rows and sum(float(r["share_pct"]) for r in rows) == pytest.approx(100.0, abs=0.01)
    for phase in (PREFILL, DECODE):
        assert sum(float(r[f"{phase}_share_pct"]) for r in rows) == pytest.approx(100.0, abs=0.01)
    traces = [p for p in (local / "traces").iterdir() if p.suffix == ".json"]
    assert len(traces) == 1
    parser = {"torch": torch_trace.parse, "onnxruntime": ort_trace.parse}[trace_format]
    events, _ = parse_traces([TraceFile(traces[0], trace_format, parser=parser)])
    assert events and sum(e.dur_us for e in events) > 0
    m = run.data.metrics
    for key in ("profile_top_op_share", "profile_copy_share", "profile_idle_share", "profile_decode_top_op_share",
                "profile_prefill_ms_mean", "profile_tpot_ms_mean"):
        assert key in m, key
    assert 0 < m["profile_top_op_share"] <= 1 and 0 <= m["profile_idle_share"] < 1
    assert run.data.tags["profile.top_op"] == rows[0]["op_type"]
    return rows


@pytest.mark.slow
def test_profiled_bench_on_torch_and_onnxruntime_side_by_side(run_cli, mlflow_runs, tmp_path, export_cache):
    """`-m task=bench runtime=torch,onnxruntime profile=on` on the CPU: each job logs a trace that parses again, ops.csv
    whose shares sum to 100 % and the chart, prints its top-10 table; the sweep's summary compares their shares."""
    from sweep_helpers import split_runs

    proc = run_cli("-m", "task=bench", "benchmark.scenario=generate", "runtime=torch,onnxruntime", "profile=on",
                   export_cache, *FAST)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.stdout.count("profile: bench: tiny_qwen") == 2 and "| op type" in proc.stdout
    assert "top operator" in proc.stdout and "host gaps between device work" in proc.stdout
    client, _ = mlflow_runs(tmp_path)
    (parent,), children = split_runs(client)
    formats = {"torch": "torch", "onnxruntime": "onnxruntime"}
    for run in children:
        runtime = run.data.tags["runtime"]
        rows = check_profile_artifacts(client, run, tmp_path / runtime, formats[runtime])
        table = proc.stdout.split(f"profile: bench: tiny_qwen on {runtime}")[1]
        assert rows[0]["op_type"] in table  # the console shows the top of the same table
    summary_md = Path(client.download_artifacts(parent.info.run_id, "summary.md", str(tmp_path))).read_text()
    assert "top op share" in summary_md and "host idle share" in summary_md


@pytest.mark.slow
def test_profiled_infer(run_cli, mlflow_runs, tmp_path, export_cache):
    proc = run_cli("task=infer", "runtime=onnxruntime", "profile=on", "benchmark.prompt=hello",
                   "benchmark.new_tokens=6", "telemetry=off", export_cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "profile: infer tiny_qwen on onnxruntime" in proc.stdout
    client, runs = mlflow_runs(tmp_path)
    (run,) = runs
    check_profile_artifacts(client, run, tmp_path, "onnxruntime")
    assert run.data.metrics["tpot_ms_mean"] > 0  # the measured generation's own figures stay


# ------------------------------------------------------------------------------------------------ pyACL

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """tiny_qwen's kv_cache graph compiled by the fake atc for batch 1."""
    from ascend_lab.compile import ensure_compiled
    from ascend_lab.config import AppConfig
    from ascend_lab.context import JobContext
    from ascend_lab.export import ensure_exported
    from ascend_lab.tracking import Tracker

    launch = tmp_path_factory.mktemp("acl_profile")
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", f"{FAKES / 'bin'}:{__import__('os').environ['PATH']}")
    cfg = AppConfig()
    ctx = JobContext(cfg, Tracker(), launch, launch)
    exported = ensure_exported(cfg, ctx, dtype=cfg.atc.export_dtype)
    om = ensure_compiled(cfg, ctx, exported, required=True)
    mp.undo()
    return exported, om



def acl_generate(runtime, new_tokens=6):
    from ascend_lab.device import HostTimer
    from ascend_lab.profiling.profiled_pass import profile_generate

    ids = np.random.default_rng(3).integers(0, 300, size=(1, 9))
    engine = runtime.engine(9 + new_tokens, 1024)
    engine.prepare(1, 9, new_tokens)
    return profile_generate(runtime, engine, None, ProfileConfig(enabled=True), runtime.om_path.parent / "p",
                            ids, np.ones_like(ids), new_tokens, HostTimer)


PROF_ORDER = ["prof.init", "prof.create_config", "prof.start", "prof.stop", "prof.destroy_config", "prof.finalize"]


def test_acl_profiling_through_the_simulator(sim, compiled, tmp_path):
    from ascend_lab.runtimes.acl.runtime import AclRuntime

    exported, om = compiled
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        report = acl_generate(runtime)
    calls = [c for c in sim._sim.state.calls if c.startswith("prof.")]
    assert calls == PROF_ORDER * 2  # one profiling session for the prefill, one for the decode steps
    executes = [c for c in sim._sim.state.calls if c == "mdl.execute"]
    assert executes  # the profiled executions ran between start and stop
    assert [(t.format, t.phase) for t in report.traces] == [(MSPROF, PREFILL), (MSPROF, DECODE)]
    summaries = sorted(Path(report.traces[1].path).rglob("op_summary_*.csv"))
    assert len(summaries) == 1 and len(list(Path(report.traces[1].path).rglob("msprof_*.json"))) == 1
    table = report.table
    assert set(table.phases) == {PREFILL, DECODE}
    assert sum(table.share(r) for r in table.rows) == pytest.approx(1.0)
    assert any(r.kind == COPY and r.op == "aclrtMemcpy" for r in table.rows)  # ACL API data: the copies
    assert report.metrics["profile_decode_copy_share"] > 0
    assert sim._sim.leaks() == []


@pytest.mark.parametrize("failing", ["mdl.execute", "prof.start", "prof.create_config"])
def test_acl_profiling_releases_everything_when_a_step_fails(sim, compiled, failing):
    from ascend_lab.runtimes.acl.runtime import AclError, AclRuntime

    exported, om = compiled
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        sim._sim.fail_next(failing, 507011)
        with pytest.raises(AclError, match=failing.replace("mdl.", "acl.mdl.").replace("prof.", "acl.prof.")):
            acl_generate(runtime)
        calls = [c for c in sim._sim.state.calls if c.startswith("prof.")]
        assert calls[-1] == "prof.finalize" and calls[0] == "prof.init"
        assert sim.prof._leaks() == []  # the profiling session is gone while the runtime is still open
    assert sim._sim.leaks() == []
