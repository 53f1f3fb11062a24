"""``acl.prof``: the pyACL profiling API, simulated (written from the CANN documents, never from ascend_lab).

Calls, signatures and return shapes (aclpythondevg, "Profiling pyACL API"; CANN 8.0 pages aclpythondevg_01_0861..0864,
_0850, _0852; 6.0.1 page aclpythondevg_01_0717):

  ret = acl.prof.init(profiler_result_path)       str, an absolute path ("此路径为绝对路径"), at most 4096 bytes
  config = acl.prof.create_config(device_list, aicore_metrics, aicore_events, data_type_config)
                                                  int pointer; 0 on failure
  ret = acl.prof.start(config) / acl.prof.stop(config) / acl.prof.destroy_config(config)
  ret = acl.prof.finalize()

Rules enforced, each from the same pages and the call-order page (CANN 9.1 aclpythondevg_01_0847):
  * init after acl.init; init twice without finalize → ACL_ERROR_REPEAT_INITIALIZE ("重复初始化");
  * start / stop / finalize without init → ACL_ERROR_UNINITIALIZE (aclError:
    "请检查是否已调用对应功能的初始化接口,例如 ... 初始化Profiling的acl.prof.init接口");
  * start twice with the same config or a device already being profiled → an error; stop with a config other than
    the one started → an error ("Must be the same as aclprofConfig passed to the acl.prof.start call");
  * destroy_config of a config already destroyed → an error ("重复调用 ... 会出现重复释放内存的报错");
  * device ids must be devices of the simulated host; aicore_metrics an aclprofAicoreMetrics value
    (aclpythondevg "aclprofAicoreMetrics": 0..8, ACL_AICORE_NONE = 0xFF); aicore_events 0 ("目前配置为0").
  Codes are the aclError list's (ACL_ERROR_INVALID_PARAM 100000 where no specific one is documented).

What it writes: pyACL itself leaves raw data in ``PROF_<n>_<timestamp>_<id>/`` under the init path, which
``msprof --export=on`` turns into ``mindstudio_profiler_output/`` (CANN profiling docs, "General Description" of
the profile data directory, atlasprofiling_16_0056). This stand-in writes both at acl.prof.stop: a placeholder raw
``device_<id>/data/`` folder and the exported summaries, so nothing here needs msprof:
  op_summary_<ts>.csv    one row per operator task (atlasprofiling_16_0067 / _0165 fields: Device_id, Model Name,
                         Model ID, Task ID, Stream ID, Op Name, OP Type, Task Type, Task Start Time(us),
                         Task Duration(us), Task Wait Time(us), Block Dim)
  op_statistic_<ts>.csv  per operator type (atlasprofiling_16_0068: Device_id, Model Name, OP Type, Core Type, Count,
                         Total Time(us), Avg Time(us), Min Time(us), Max Time(us), Ratio(%))
  api_statistic_<ts>.csv per AscendCL API (atlasprofiling_16_0063: Device_id, Level, API Name, Time(us), Count,
                         Avg(us), Min(us), Max(us), Variance), when ACL_PROF_ACL_API is set
  msprof_<ts>.json       the timeline, a Chrome trace of the tasks and API calls
Operator tasks are timed from the onnxruntime execution ``mdl.execute`` does while collecting: the model runs on a
profiling onnxruntime session of the same graph and each node's kernel event becomes one task (OP Type: the ONNX
operator type; ATC's own names, e.g. MatMulV2, are not simulated). Timestamps are Unix-epoch µs. API rows are the
wall time of each simulated call (``acl.rt.memcpy`` → aclrtMemcpy, ``acl.mdl.execute`` → aclmdlExecute).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _sim
from ._sim import (ACL_ERROR_INVALID_PARAM, ACL_ERROR_REPEAT_INITIALIZE, ACL_ERROR_UNINITIALIZE, AclFail, api,
                   check)

# data_type_config bits (aclpythondevg_01_0705) and aclprofAicoreMetrics values (aclpythondevg "aclprofAicoreMetrics").
ACL_PROF_ACL_API = 0x0001
ACL_PROF_TASK_TIME = 0x0002
ACL_PROF_AICORE_METRICS = 0x0004
ACL_PROF_AICPU = 0x0008
AICORE_METRICS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 0xFF)
MAX_PATH_BYTES = 4096  # aclprofInit: "最大长度不超过4096字节"


@dataclass
class Config:
    devices: list[int]
    aicore_metrics: int
    data_types: int


@dataclass
class Window:
    """One start → stop collection: the profiling sessions opened for it and the API calls seen."""

    config: int
    sessions: dict[int, Any] = field(default_factory=dict)  # model id → profiling InferenceSession
    api_calls: list[tuple[str, int, int]] = field(default_factory=list)  # (C name, start ns, end ns)


@dataclass
class ProfState:
    path: Path | None = None  # set by init, cleared by finalize
    configs: dict[int, Config] = field(default_factory=dict)
    window: Window | None = None
    sessions_written: int = 0


def _state() -> ProfState:
    # Kept on the simulator's state object, so _sim.reset() forgets profiling too.
    return _sim.state.__dict__.setdefault("prof", ProfState())


def _leaks() -> list[str]:
    state = _state()
    out = []
    if state.path is not None:
        out.append(f"acl.prof.init({state.path}) without acl.prof.finalize")
    if state.window is not None:
        out.append(f"acl.prof.start({hex(state.window.config)}) without acl.prof.stop")
    out += [f"profiling config {hex(c)} not destroyed (acl.prof.destroy_config)" for c in state.configs]
    return out


def _observe(name: str, start_ns: int, end_ns: int) -> None:
    window = _state().window
    if window is None or name.startswith("prof.") or name.startswith("util."):
        return  # profiling's own calls and the Python-only util helpers are no AscendCL APIs
    window.api_calls.append((_c_name(name), start_ns, end_ns))


_sim.LEAK_SOURCES.append(_leaks)
_sim.API_OBSERVERS.append(_observe)


def _c_name(name: str) -> str:
    """``rt.memcpy`` → ``aclrtMemcpy``, ``mdl.set_input_dynamic_dims`` → ``aclmdlSetInputDynamicDims``,
    ``init`` → ``aclInit`` (pyACL's functions wrap the C API of the same name)."""
    module, _, function = name.rpartition(".")
    return "acl" + module + "".join(part.capitalize() for part in function.split("_"))


# ---------------------------------------------------------------- the API

@api("prof.init", "ret")
def init(profiler_result_path: str) -> int:
    _sim.require_init()
    state = _state()
    check(state.path is None, ACL_ERROR_REPEAT_INITIALIZE)
    check(isinstance(profiler_result_path, str) and os.path.isabs(profiler_result_path)
          and 0 < len(profiler_result_path.encode()) <= MAX_PATH_BYTES, ACL_ERROR_INVALID_PARAM)
    path = Path(profiler_result_path)
    check(path.is_dir() and os.access(path, os.W_OK), ACL_ERROR_INVALID_PARAM)  # the process must write there
    state.path = path
    return 0


@api("prof.create_config", "value")
def create_config(device_list, aicore_metrics: int, aicore_events: int, data_type_config: int) -> int:
    _sim.require_init()
    check(isinstance(device_list, (list, tuple)) and len(device_list) > 0
          and all(isinstance(d, int) and 0 <= d < _sim.state.devices for d in device_list), ACL_ERROR_INVALID_PARAM)
    check(aicore_metrics in AICORE_METRICS and aicore_events == 0, ACL_ERROR_INVALID_PARAM)
    check(isinstance(data_type_config, int) and data_type_config > 0, ACL_ERROR_INVALID_PARAM)
    handle = _sim.state.handle()
    _state().configs[handle] = Config(list(device_list), aicore_metrics, data_type_config)
    return handle


@api("prof.start", "ret")
def start(config: int) -> int:
    state = _state()
    check(state.path is not None, ACL_ERROR_UNINITIALIZE)
    check(config in state.configs, ACL_ERROR_INVALID_PARAM)
    check(state.window is None, ACL_ERROR_INVALID_PARAM)  # a second start: its devices are being profiled already
    state.window = Window(config)
    return 0


@api("prof.stop", "ret")
def stop(config: int) -> int:
    state = _state()
    check(state.path is not None, ACL_ERROR_UNINITIALIZE)
    check(state.window is not None and state.window.config == config, ACL_ERROR_INVALID_PARAM)
    window, state.window = state.window, None
    _write(state, window)
    return 0


@api("prof.destroy_config", "ret")
def destroy_config(config: int) -> int:
    state = _state()
    check(config in state.configs, ACL_ERROR_INVALID_PARAM)
    check(state.window is None or state.window.config != config, ACL_ERROR_INVALID_PARAM)  # still collecting
    del state.configs[config]
    return 0


@api("prof.finalize", "ret")
def finalize() -> int:
    state = _state()
    check(state.path is not None, ACL_ERROR_UNINITIALIZE)
    if state.window is not None:  # collection still running: flushed, as finalize ends profiling
        window, state.window = state.window, None
        _write(state, window)
    state.path = None
    return 0


# ---------------------------------------------------------------- hooks for mdl.execute

def profiling_session(model) -> Any:
    """The profiling onnxruntime session ``mdl.execute`` runs ``model`` on while a collection with task time is
    running, else None (the model's own session)."""
    state = _state()
    window = state.window
    if window is None or not state.configs[window.config].data_types & ACL_PROF_TASK_TIME:
        return None
    if model.model_id not in window.sessions:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tempfile.gettempdir()) / f"acl_sim_prof_{os.getpid()}")
        window.sessions[model.model_id] = (model, ort.InferenceSession(
            model.source, options, providers=["CPUExecutionProvider"], disabled_optimizers=["CastChainElimination"]))
    return window.sessions[model.model_id][1]


# ---------------------------------------------------------------- output

def _tasks(window: Window) -> list[dict]:
    """One task per operator execution, from each profiling session's onnxruntime profile."""
    tasks = []
    for model_id, (model, session) in window.sessions.items():
        origin_us = session.get_profiling_start_time_ns() / 1e3
        trace_path = session.end_profiling()
        events = json.loads(Path(trace_path).read_text())
        Path(trace_path).unlink()
        for event in events:
            if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
                continue
            tasks.append({"model_id": model_id, "model_name": Path(model.path).stem,
                          "op_name": event["name"][:-len("_kernel_time")],
                          "op_type": event.get("args", {}).get("op_name", "N/A"),
                          "start_us": origin_us + event["ts"], "dur_us": float(event["dur"])})
    tasks.sort(key=lambda t: t["start_us"])
    return tasks


def _write(state: ProfState, window: Window) -> None:
    config = state.configs[window.config]
    state.sessions_written += 1
    stamp = time.strftime("%Y%m%d%H%M%S") + f"{int(time.time() * 1000) % 1000:03d}"
    session_dir = state.path / f"PROF_{state.sessions_written:06d}_{stamp}_SIMULATEDACLPROF"
    out = session_dir / "mindstudio_profiler_output"
    for device in config.devices:
        raw = session_dir / f"device_{device}" / "data"
        raw.mkdir(parents=True, exist_ok=True)
        (raw / "README.txt").write_text("simulated raw data (tests/fakes/pyacl/acl/prof.py)\n")
    out.mkdir(parents=True, exist_ok=True)
    device = config.devices[0]
    tasks = _tasks(window) if config.data_types & ACL_PROF_TASK_TIME else []
    with open(out / f"op_summary_{stamp}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Device_id", "Model Name", "Model ID", "Task ID", "Stream ID", "Op Name", "OP Type",
                         "Task Type", "Task Start Time(us)", "Task Duration(us)", "Task Wait Time(us)", "Block Dim"])
        previous_end = None
        for task_id, task in enumerate(tasks):
            wait = 0.0 if previous_end is None else max(task["start_us"] - previous_end, 0.0)
            previous_end = task["start_us"] + task["dur_us"]
            writer.writerow([device, task["model_name"], task["model_id"], task_id, 0, task["op_name"],
                             task["op_type"], "AI_CORE", f"{task['start_us']:.3f}", f"{task['dur_us']:.3f}",
                             f"{wait:.3f}", 1])
    by_type: dict[str, list[float]] = defaultdict(list)
    for task in tasks:
        by_type[task["op_type"]].append(task["dur_us"])
    total = sum(sum(v) for v in by_type.values()) or 1.0
    with open(out / f"op_statistic_{stamp}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Device_id", "Model Name", "OP Type", "Core Type", "Count", "Total Time(us)",
                         "Avg Time(us)", "Min Time(us)", "Max Time(us)", "Ratio(%)"])
        for op_type, values in sorted(by_type.items(), key=lambda kv: -sum(kv[1])):
            writer.writerow([device, tasks[0]["model_name"], op_type, "AI_CORE", len(values), f"{sum(values):.3f}",
                             f"{sum(values) / len(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}",
                             f"{100 * sum(values) / total:.3f}"])
    apis: dict[str, list[float]] = defaultdict(list)
    if config.data_types & ACL_PROF_ACL_API:
        for name, start_ns, end_ns in window.api_calls:
            apis[name].append((end_ns - start_ns) / 1e3)
        with open(out / f"api_statistic_{stamp}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Device_id", "Level", "API Name", "Time(us)", "Count", "Avg(us)", "Min(us)", "Max(us)",
                             "Variance"])
            for name, values in sorted(apis.items()):
                writer.writerow([device, "AscendCL", name, f"{sum(values):.3f}", len(values),
                                 f"{sum(values) / len(values):.3f}", f"{min(values):.3f}", f"{max(values):.3f}",
                                 f"{statistics.pvariance(values):.3f}"])
    timeline = [{"name": t["op_name"], "ph": "X", "pid": "NPU", "tid": "Stream 0", "ts": t["start_us"],
                 "dur": t["dur_us"], "args": {"OP Type": t["op_type"], "Task Type": "AI_CORE"}} for t in tasks]
    timeline += [{"name": name, "ph": "X", "pid": "CANN", "tid": "AscendCL", "ts": start / 1e3,
                  "dur": (end - start) / 1e3} for name, start, end in window.api_calls] \
        if config.data_types & ACL_PROF_ACL_API else []
    (out / f"msprof_{stamp}.json").write_text(json.dumps(timeline))


__all__ = ["init", "create_config", "start", "stop", "destroy_config", "finalize", "AclFail"]
