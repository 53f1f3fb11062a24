"""System-metrics monitors, on MLflow's own machinery (``mlflow.system_metrics``).

MLflow's :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor` runs a thread that asks
each of its monitors (CPU, disk, network, and NVML's GPU monitor where ``nvidia-ml-py`` and a driver exist)
for a sample every ``sampling_interval`` seconds and logs their means as ``system/<name>`` metrics of one run,
which the run's "System metrics" tab draws. It is built here for a run id, without the fluent
``mlflow.start_run`` (whose global active run the jobs do not use). Two monitors on MLflow's
:class:`~mlflow.system_metrics.metrics.base_metrics_monitor.BaseMetricsMonitor` join it:

- :class:`NpuMonitor`: per chip of ``npu-smi info``, ``npu_<i>_power_usage_watts``,
  ``npu_<i>_utilization_percentage`` (AI Core), ``npu_<i>_memory_usage_megabytes`` / ``_percentage`` (HBM, or
  the chip's memory where no HBM is reported), ``npu_<i>_temperature_celsius`` (from
  ``npu-smi info -t power|usages|temp -i <npu>``, one call of each per NPU and sample), and, where torch_npu is
  loaded, ``npu_<i>_torch_allocated_megabytes``. ``<i>`` is the chip's position in the ``npu-smi info`` table,
  as ``gpu_<i>`` is NVML's index: the names of MLflow's GPU monitor with ``npu`` for ``gpu``.
- :class:`RaplMonitor`: ``cpu_package_power_watts``, the CPU packages' power between two samples (RAPL).

:class:`JobSystemMetricsMonitor` also keeps every sample with its time (``trace``), which the energy figures
integrate, lets the main thread take a sample at a timed window's edges, and publishes the
samples still pending when it stops, so even a job shorter than one interval has a point.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import defaultdict

from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from ascend_lab.cann import npu_smi
from ascend_lab.telemetry.energy import RaplReader, physical_index

log = logging.getLogger(__name__)

MB = 1024 * 1024
# How often the sampling thread writes its points to the store, and reads the run's status (a job stops its
# sampler itself; the status catches a run ended from elsewhere).
PUBLISH_EVERY_S = 10.0
# The first seconds of a run are sampled this often, whatever the interval.
FIRST_SECONDS, FIRST_INTERVAL_S = 5.0, 0.1
STATUS_EVERY_S = 10.0
LOG_BATCH_MAX = 1000  # metrics per MLflow log_batch call
# MLflow's own monitors round their means to one decimal; so do these.
DECIMALS = 1
# Fields each npu-smi query is read from, first found wins (the spellings the hiascend pages use).
POWER_FIELDS = ("NPU Real-time Power(W)", "Power Dissipation(W)", "Power(W)")
UTILIZATION_FIELDS = ("Aicore Usage Rate(%)",)
HBM_FIELDS = (("HBM Capacity(MB)", "HBM Usage Rate(%)"), ("Memory Capacity(MB)", "Memory Usage Rate(%)"))
TEMPERATURE_FIELDS = ("Temperature (C)", "NPU Temperature(C)")


def _mean_metrics(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(sum(v) / len(v), DECIMALS) for k, v in samples.items() if v}


class NpuMonitor(BaseMetricsMonitor):
    """The chips npu-smi lists (see the module docstring). ``errors[i]`` says why chip ``i``'s power was not
    read in the last sample (the energy figures quote it)."""

    # Three npu-smi calls per chip take far longer than a CPU sample: the thread asks for them at most this often
    # (a timed window's edge samples still read them).
    min_interval_s = 1.0

    def __init__(self, chips: list[npu_smi.NpuChip], timeout_s: float) -> None:
        super().__init__()
        self.chips = chips
        self.timeout_s = timeout_s
        self.errors: dict[int, str] = {}

    def collect_metrics(self) -> None:
        by_npu: dict[int, list[tuple[int, npu_smi.NpuChip]]] = defaultdict(list)
        for i, chip in enumerate(self.chips):
            by_npu[chip.npu_id].append((i, chip))
        for npu_id, chips in by_npu.items():
            power, power_error = npu_smi.npu_smi_fields("power", npu_id, timeout_s=self.timeout_s)
            usages, _ = npu_smi.npu_smi_fields("usages", npu_id, timeout_s=self.timeout_s)
            temp, _ = npu_smi.npu_smi_fields("temp", npu_id, timeout_s=self.timeout_s)
            for i, chip in chips:
                self._chip(i, chip, power.get(chip.chip_id, {}), usages.get(chip.chip_id, {}),
                           temp.get(chip.chip_id, {}), power_error)
        self._torch_memory()

    def _chip(self, i: int, chip: npu_smi.NpuChip, power: dict, usages: dict, temp: dict, power_error: str | None) -> None:
        watts = npu_smi.field_number(power, *POWER_FIELDS)
        if watts is None:
            self.errors[i] = power_error or (f"`npu-smi info -t power -i {chip.npu_id}` printed no power figure for "
                                             f"chip {chip.chip_id} ({power or 'no fields'})")
        else:
            self.errors.pop(i, None)
            self._metrics[f"npu_{i}_power_usage_watts"].append(watts)
        utilization = npu_smi.field_number(usages, *UTILIZATION_FIELDS)
        if utilization is not None:
            self._metrics[f"npu_{i}_utilization_percentage"].append(utilization)
        for capacity_field, rate_field in HBM_FIELDS:
            capacity, rate = npu_smi.field_number(usages, capacity_field), npu_smi.field_number(usages, rate_field)
            if capacity is not None and rate is not None:
                self._metrics[f"npu_{i}_memory_usage_percentage"].append(rate)
                self._metrics[f"npu_{i}_memory_usage_megabytes"].append(capacity * rate / 100)
                break
        celsius = npu_smi.field_number(temp, *TEMPERATURE_FIELDS)
        if celsius is not None:
            self._metrics[f"npu_{i}_temperature_celsius"].append(celsius)

    def _torch_memory(self) -> None:
        """The torch allocator's figure per visible NPU, where this process loaded torch_npu (never imported here)."""
        if "torch_npu" not in sys.modules:
            return
        try:
            import torch

            for device in range(torch.npu.device_count()):
                i = physical_index(device, "ASCEND_RT_VISIBLE_DEVICES")
                self._metrics[f"npu_{i}_torch_allocated_megabytes"].append(torch.npu.memory_allocated(device) / MB)
        except Exception as exc:  # a driver error must not stop the sampling thread
            log.debug("torch.npu memory figures unavailable: %s", exc)

    def aggregate_metrics(self) -> dict[str, float]:
        return _mean_metrics(self._metrics)


class RaplMonitor(BaseMetricsMonitor):
    """``cpu_package_power_watts``: the RAPL packages' energy between two samples over the time between them."""

    def __init__(self, reader: RaplReader) -> None:
        super().__init__()
        self.reader = reader
        self._last: tuple[float, dict] | None = None

    def collect_metrics(self) -> None:
        now, reading = time.monotonic(), self.reader.read()
        if reading is None:
            return
        if self._last is not None and now > self._last[0]:
            joules = self.reader.joules(self._last[1], reading)
            self._metrics["cpu_package_power_watts"].append(joules / (now - self._last[0]))
        self._last = (now, reading)

    def aggregate_metrics(self) -> dict[str, float]:
        return _mean_metrics(self._metrics)


class JobSystemMetricsMonitor(SystemMetricsMonitor):
    """MLflow's sampler for one run, with ``extra`` monitors, a time-stamped ``trace`` and edge samples.

    Sampling and publishing hold one lock, so a sample the main thread takes (:meth:`sample`) never interleaves
    with the thread's."""

    def __init__(self, run_id: str, tracking_uri: str, interval_s: float, extra: list[BaseMetricsMonitor]) -> None:
        super().__init__(run_id, sampling_interval=interval_s, tracking_uri=tracking_uri)
        self.monitors.extend(extra)
        self.trace: list[tuple[float, dict[str, float]]] = []
        self._lock = threading.RLock()
        self._pending: list = []  # points recorded, written to the store every PUBLISH_EVERY_S
        self._last_published = time.monotonic()
        self._last_sampled: dict[int, float] = {}

    def monitor(self) -> None:
        """Sample every ``sampling_interval`` (every :data:`FIRST_INTERVAL_S` for the first :data:`FIRST_SECONDS`);
        write the points every :data:`PUBLISH_EVERY_S` and look at the run's
        status every :data:`STATUS_EVERY_S` (MLflow's loop does both at every sample: a store write and a read,
        which cost far more than the sample, so a short interval cost a share of a core)."""
        from mlflow.tracking.client import MlflowClient

        started = last_status = time.monotonic()
        while not self._shutdown_event.is_set():
            self.collect_metrics(every_monitor=False)
            # A job of a few seconds gets a curve; a long one costs what sampling_interval costs.
            early = time.monotonic() - started < FIRST_SECONDS
            interval = min(self.sampling_interval, FIRST_INTERVAL_S) if early else self.sampling_interval
            self._shutdown_event.wait(interval)
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                try:
                    if MlflowClient(self._tracking_uri).get_run(self._run_id).info.status != "RUNNING":
                        return  # the run was ended elsewhere; finish() publishes what is pending
                except Exception as exc:
                    log.debug("system metrics: cannot read the run's status: %s", exc)
                    return
            try:
                self.publish_metrics(self.aggregate_metrics())
            except Exception as exc:  # the store went away: the curve ends here
                log.debug("system metrics: cannot log: %s", exc)
                return

    @property
    def thread(self) -> threading.Thread | None:
        return self._process

    def collect_metrics(self, every_monitor: bool = True) -> dict:
        """One sample of every monitor (from the thread, or the main thread at a window's edges); returns the
        values it added. The thread passes ``every_monitor=False``: a monitor with a ``min_interval_s`` is then
        skipped until that much time has passed since its last sample."""
        with self._lock:
            # Most monitors append a value per sample to a list; MLflow's network monitor keeps one running total.
            before = {k: len(v) for m in self.monitors for k, v in m._metrics.items() if isinstance(v, list)}
            now = time.monotonic()
            for monitor in self.monitors:
                wait = getattr(monitor, "min_interval_s", 0.0)
                if not every_monitor and now - self._last_sampled.get(id(monitor), -wait) < wait:
                    continue
                self._last_sampled[id(monitor)] = now
                try:
                    monitor.collect_metrics()
                except Exception as exc:  # one monitor's failure must not end the others' curves
                    log.debug("system metrics: %s failed: %s", type(monitor).__name__, exc)
            # Only the values this sample added: a monitor that read nothing now leaves no stale value.
            fresh = {k: (v[-1] if isinstance(v, list) else v) for m in self.monitors for k, v in m._metrics.items()
                     if not isinstance(v, list) or len(v) > before.get(k, 0)}
            self.trace.append((time.monotonic(), fresh))
            return fresh

    def aggregate_metrics(self) -> dict:
        with self._lock:
            return super().aggregate_metrics()

    def publish_metrics(self, metrics: dict, flush: bool = False) -> None:
        """Record one point per metric (``system/<name>``, at this step and time); write the recorded points when
        :data:`PUBLISH_EVERY_S` has passed since the last write, or with ``flush``."""
        from mlflow.entities import Metric

        with self._lock:
            prefix = self._metrics_prefix + (self.node_id + "/" if self.node_id else "")
            timestamp = int(time.time() * 1000)
            self._pending += [Metric(prefix + k, v, timestamp, self._logging_step) for k, v in metrics.items()]
            self._logging_step += 1
            for monitor in self.monitors:
                monitor.clear_metrics()
            if self._pending and (flush or time.monotonic() - self._last_published >= PUBLISH_EVERY_S):
                from mlflow.tracking.client import MlflowClient

                pending, self._pending = self._pending, []
                self._last_published = time.monotonic()
                client = MlflowClient(self._tracking_uri)
                for i in range(0, len(pending), LOG_BATCH_MAX):
                    client.log_batch(self._run_id, metrics=pending[i:i + LOG_BATCH_MAX])

    def samples_between(self, t0: float, t1: float) -> list[tuple[float, dict[str, float]]]:
        with self._lock:
            return [(t, s) for t, s in self.trace if t0 <= t <= t1]

    def finish(self) -> None:
        """Stop and join the thread, then publish what it sampled since its last point."""
        super().finish()
        with self._lock:
            try:
                self.publish_metrics(self.aggregate_metrics(), flush=True)
            except Exception as exc:  # the run's store went away; the curve lacks its last point
                log.warning("system metrics: the last samples could not be logged: %s", exc)


__all__ = ["JobSystemMetricsMonitor", "NpuMonitor", "RaplMonitor"]
