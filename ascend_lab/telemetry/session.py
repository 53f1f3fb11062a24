"""A job's telemetry: the sampling thread from the run's opening to its end, and the timed windows in between.

:func:`job_telemetry` is the job lifecycle's one hook (``ascend_lab.context``): it starts MLflow's system-metrics
sampler for the job's run (with the NPU and RAPL monitors where they apply) and stops and joins it on every
way out of the job: success, an exception, KeyboardInterrupt. The curve covers the whole job.

The benchmark loop marks its timed window with :func:`timed_window` (``ascend_lab.bench.scenarios``): at the
window's start and end it reads the energy counters and takes one sample, and does nothing per iteration. The
task then asks :func:`bench_figures` for the window's figures (:mod:`ascend_lab.telemetry.energy`), its mean
device utilisation and peak device memory. The session in progress is process-wide (one job per process; a
pipeline's stages share their job's), so the scenarios need no extra argument; with no session (``telemetry=off``,
``tracking=off``, a test calling a scenario directly) the window is a no-op and only the memory figure is given.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator, Mapping

from ascend_lab.config.telemetry import TelemetryConfig
from ascend_lab.telemetry.energy import (
    MEMORY_KEYS, POWER_KEYS, UTILIZATION_KEYS, Figures, NvmlEnergy, RaplReader, SourceEnergy, Window, WorkDevice,
    MJ_PER_J, combine, physical_index, trapezoid_j,
)

log = logging.getLogger(__name__)

THREAD_NAME = "SystemMetricsMonitor"  # the name MLflow gives its sampling thread
# MLflow announces every start and stop of its sampler at INFO; a job's console has its own story to tell.
MLFLOW_SAMPLER_LOGGER = "mlflow.system_metrics"
_active: "TelemetrySession | None" = None


class TelemetrySession:
    """The sampler of one run and the last timed window (see the module docstring)."""

    def __init__(self, cfg: TelemetryConfig, run_id: str, tracking_uri: str) -> None:
        from ascend_lab.cann import npu_smi
        from ascend_lab.telemetry.monitors import JobSystemMetricsMonitor, NpuMonitor, RaplMonitor

        self.cfg = cfg
        self.rapl = RaplReader(cfg.rapl_root)
        self.nvml = NvmlEnergy()
        self.npu_chips: list = []
        self.npu_reason: str | None = None
        extra = []
        overview = npu_smi.npu_smi_overview(timeout_s=cfg.npu_smi_timeout_s)
        if overview.path is None:
            self.npu_reason = "npu-smi not found on PATH (no Ascend driver on this host)"
        elif overview.error:
            self.npu_reason = overview.error
        else:
            self.npu_chips = overview.chips
        self.npu_monitor = NpuMonitor(self.npu_chips, cfg.npu_smi_timeout_s) if self.npu_chips else None
        if self.npu_monitor is not None:
            extra.append(self.npu_monitor)
        if self.rapl.available:
            extra.append(RaplMonitor(self.rapl))
        self.monitor = JobSystemMetricsMonitor(run_id, tracking_uri, cfg.interval_s, extra)
        self.window: Window | None = None

    def start(self) -> None:
        self.monitor.start()

    def stop(self) -> None:
        self.monitor.finish()

    @property
    def running(self) -> bool:
        thread = self.monitor.thread
        return thread is not None and thread.is_alive()

    # -- the timed window ---------------------------------------------------------------------------

    def begin_window(self) -> None:
        """One sample, then the counters, then the clock: the window starts when the loop does."""
        first = self.monitor.collect_metrics()
        window = Window(t0=0.0, t1=0.0, rapl_start=self.rapl.read() if self.rapl.available else None,
                        nvml_start=self._nvml_counters())
        window.t0 = time.monotonic()
        window.samples = [(window.t0, first)]
        self.window = window

    def _nvml_counters(self) -> dict[int, int | None]:
        """Every GPU's energy counter (the job's GPU is known only afterwards; the reads are cheap)."""
        return {i: self.nvml.read_mj(i) for i in range(self.nvml.count)}

    def end_window(self) -> None:
        """The clock, then the counters, then one sample: the window ends when the loop does. The edge samples
        stand at the window's ends; the thread's samples in between keep their times."""
        window = self.window
        if window is None:
            return
        window.t1 = time.monotonic()
        window.nvml_end = self._nvml_counters()
        window.rapl_end = self.rapl.read() if self.rapl.available else None
        last = self.monitor.collect_metrics()
        inside = [(t, sample) for t, sample in self.monitor.samples_between(window.t0, window.t1)
                  if window.t0 < t < window.t1]
        window.samples = [window.samples[0], *inside, (window.t1, last)]

    # -- figures ------------------------------------------------------------------------------------

    def figures(self, tokens: int, work: WorkDevice) -> Figures:
        """Energy, mean utilisation and peak memory of the last window (empty before any window)."""
        window = self.window
        if window is None or window.t1 <= 0:
            return Figures()
        sources, absent = [], {}
        for name, found in (("cpu", self._cpu_energy(window)), ("npu", self._npu_energy(window, work)),
                            ("cuda", self._cuda_energy(window, work))):
            if isinstance(found, SourceEnergy):
                sources.append(found)
            elif found is not None:  # a reason; None: the source does not apply to this host and job
                absent[name] = found
        figures = combine(window, sources, absent, tokens)
        self._device_figures(window, work, figures)
        return figures

    def _cpu_energy(self, window: Window) -> SourceEnergy | str:
        if not self.rapl.available:
            return self.rapl.reason or "RAPL unavailable"
        if window.rapl_start is None or window.rapl_end is None:
            return f"a RAPL counter under {self.rapl.root} could not be read at the window's start or end"
        return SourceEnergy("cpu", self.rapl.joules(window.rapl_start, window.rapl_end),
                            f"RAPL energy counters ({len(self.rapl.domains)} package(s))", POWER_KEYS["cpu"])

    def _npu_energy(self, window: Window, work: WorkDevice) -> SourceEnergy | str | None:
        """The NPU chip at the job's index; None (not mentioned) without npu-smi unless the job is on an NPU."""
        if self.npu_monitor is None:
            return self.npu_reason if work.kind == "npu" else None
        chip = physical_index(work.index, "ASCEND_RT_VISIBLE_DEVICES")
        if chip >= len(self.npu_chips):
            return f"device index {chip} is not one of the {len(self.npu_chips)} chip(s) npu-smi lists"
        key = POWER_KEYS["npu"].format(i=chip)
        points = window.series(key)
        if len(points) < 2 or points[0][0] > window.t0 or points[-1][0] < window.t1:
            return (self.npu_monitor.errors.get(chip)
                    or f"npu-smi gave no power sample of chip {chip} at the window's ends")
        return SourceEnergy("npu", trapezoid_j(points), f"npu-smi power of npu_{chip}, integrated over {len(points)} "
                            "samples", key)

    def _cuda_energy(self, window: Window, work: WorkDevice) -> SourceEnergy | str | None:
        if not self.nvml.available:
            return self.nvml.reason if work.kind == "cuda" else None
        gpu = physical_index(work.index, "CUDA_VISIBLE_DEVICES")
        key = POWER_KEYS["cuda"].format(i=gpu)
        start, end = (window.nvml_start or {}).get(gpu), (window.nvml_end or {}).get(gpu)
        if start is not None and end is not None:
            return SourceEnergy("cuda", (end - start) / MJ_PER_J,
                                f"NVML total-energy counter of gpu_{gpu}", key)
        points = window.series(key)
        if len(points) < 2:
            return f"NVML gave no energy counter and no power samples of gpu_{gpu} in the window"
        return SourceEnergy("cuda", trapezoid_j(points), f"NVML power of gpu_{gpu}, integrated over {len(points)} "
                            "samples", key)

    def _device_figures(self, window: Window, work: WorkDevice, figures: Figures) -> None:
        i = physical_index(work.index, "ASCEND_RT_VISIBLE_DEVICES" if work.kind == "npu" else "CUDA_VISIBLE_DEVICES")
        utilization = [v for _, v in window.series(UTILIZATION_KEYS[work.kind].format(i=i))]
        if utilization:
            figures.metrics["device_utilization_pct_mean"] = sum(utilization) / len(utilization)
            figures.tags["device_utilization.source"] = UTILIZATION_KEYS[work.kind].format(i=i)
        if work.kind in MEMORY_KEYS:
            memory = [v for _, v in window.series(MEMORY_KEYS[work.kind].format(i=i))]
            if memory:
                figures.metrics["peak_memory_mb"] = max(memory)
                figures.tags["peak_memory.source"] = (f"{MEMORY_KEYS[work.kind].format(i=i)}: the chip's memory in use "
                                                      "(every process), sampled")


@contextmanager
def job_telemetry(cfg: TelemetryConfig, run_id: str | None,
                  tracking_uri: str | None) -> Iterator[TelemetrySession | None]:
    """The sampler for the job's run, stopped and joined however the block ends (see the module docstring).

    Yields None (and samples nothing) with ``telemetry.enabled=false`` or without a run; a sampler that cannot
    start is a warning, never the job's failure."""
    global _active
    if not cfg.enabled or run_id is None or tracking_uri is None:
        yield None
        return
    logging.getLogger(MLFLOW_SAMPLER_LOGGER).setLevel(logging.WARNING)
    try:
        session = TelemetrySession(cfg, run_id, tracking_uri)
        session.start()
    except Exception as exc:  # e.g. psutil missing: the job runs without curves
        log.warning("telemetry: the system-metrics sampler could not start (%s); the job runs without it", exc)
        yield None
        return
    previous, _active = _active, session
    try:
        yield session
    finally:
        _active = previous
        session.stop()


def active_session() -> TelemetrySession | None:
    return _active


@contextmanager
def timed_window() -> Iterator[None]:
    """Mark the benchmark's timed window: counters and one sample at each end, nothing in between."""
    session = _active
    if session is None:
        yield
        return
    session.begin_window()
    try:
        yield
    finally:
        session.end_window()


def bench_figures(tokens: int, work: WorkDevice, metrics: Mapping[str, float]) -> Figures:
    """The last window's figures for a bench job that processed ``tokens`` in it, and its peak memory:
    the device's memory in use where telemetry sampled it, else the torch allocator's peak (``device_peak_mb``),
    else this process's peak RSS on the host (a CPU job)."""
    session = _active
    figures = session.figures(tokens, work) if session is not None else Figures()
    if "peak_memory_mb" not in figures.metrics:
        for key, source in (("device_peak_mb", "torch allocator peak on the device (this process)"),
                            ("host_peak_rss_mb", "peak RSS of this process on the host")):
            if metrics.get(key) is not None:
                figures.metrics["peak_memory_mb"] = metrics[key]
                figures.tags["peak_memory.source"] = f"{key}: {source}"
                break
    return figures



__all__ = ["THREAD_NAME", "TelemetrySession", "active_session", "bench_figures", "job_telemetry", "timed_window"]
