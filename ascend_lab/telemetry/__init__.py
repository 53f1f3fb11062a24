"""Telemetry, energy and the environment: what a run measured *with*, beside what it measured.

One concern per module:

- :mod:`~ascend_lab.telemetry.session`: the job's sampling thread (MLflow's system metrics for the job's run,
  started when the run opens, stopped and joined on every way out) and the timed window a benchmark marks.
- :mod:`~ascend_lab.telemetry.monitors`: the NPU monitor (``system/npu_<i>_…`` from npu-smi and torch.npu) and
  the RAPL monitor, on MLflow's monitor base class, and the sampler that keeps time-stamped samples.
- :mod:`~ascend_lab.telemetry.energy`: which power sources count, how each is read (RAPL, NVML, npu-smi), and
  the energy figures of a window.
- :mod:`~ascend_lab.telemetry.environment`: ``environment.json`` and the diff behind ``doctor.compare_to``.
- :mod:`~ascend_lab.telemetry.pairing`: the torch ↔ torch_npu ↔ CANN pairing against Ascend's published table.

``telemetry=off`` samples nothing and measures no bandwidth (the roofline: :mod:`ascend_lab.bench.roofline`);
``environment.json`` is logged on every run with a tracking store all the same. The names below are the package's interface.
"""

from ascend_lab.telemetry.energy import WorkDevice
from ascend_lab.telemetry.session import THREAD_NAME, active_session, bench_figures, job_telemetry, timed_window


def work_device(runtime_name: str, device, device_index: int) -> WorkDevice:
    """Where a bench job's runtime computes: pyACL on the NPU at ``device.index`` of the config, torch and
    onnxruntime on the resolved device (onnxruntime's execution provider follows it)."""
    if runtime_name == "acl":
        return WorkDevice("npu", device_index, "runtime=acl runs the .om on the NPU")
    return WorkDevice(device.kind, device.index, f"runtime={runtime_name} on the resolved device {device.kind}")


__all__ = ["THREAD_NAME", "WorkDevice", "active_session", "bench_figures", "job_telemetry", "timed_window",
           "work_device"]
