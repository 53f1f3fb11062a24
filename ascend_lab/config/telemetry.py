"""`telemetry` group: device telemetry, energy and the roofline during jobs (telemetry=off: none).

What each field drives is in :mod:`ascend_lab.telemetry` (the package docstring). These fields are the
one source of the defaults; ``conf/telemetry/*.yaml`` state only what differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.errors import require, require_positive


@dataclass
class TelemetryConfig:
    group: ClassVar[str] = "telemetry"

    enabled: bool = field(default=True, metadata={
        "help": "false (or telemetry=off): no system-metrics sampling and no energy figures. Sampling needs a "
                "tracking run (its curves are the run's system metrics), so tracking=off samples nothing."})
    interval_s: float = field(default=1.0, metadata={
        "help": "Seconds between two samples of the system-metrics thread (MLflow's CPU/GPU monitors, RAPL) after "
                "a run's first 5 s, which are sampled every 0.1 s so that a job of a few seconds has a curve; the "
                "points are written to the store every 10 s. npu-smi is read at most once a second (its calls take "
                "longer than a CPU sample and stretch the interval)."})
    npu_smi_timeout_s: float = field(default=5.0, metadata={
        "help": "Seconds one npu-smi call may take before its sample is skipped (a hung driver never blocks the job)."})
    rapl_root: str = field(default="/sys/class/powercap", metadata={
        "help": "Where the CPU's RAPL energy counters live (intel-rapl:<n>/energy_uj). Point it at an empty folder "
                "to leave the CPU out of the energy figures."})
    roofline: bool = field(default=True, metadata={
        "help": "Measure the device's memory bandwidth (once per host and device, cached) and log roofline_tokens_s "
                "and roofline_fraction beside every generate job's decode throughput (ascend_lab.bench.roofline)."})
    bandwidth_array_gb: float = field(default=1.0, metadata={
        "help": "GB (1e9 bytes) of the array the bandwidth is measured on; below 1 GB caches serve part of it "
                "and the figure is flagged (tag roofline.bandwidth_fits=false). Memory held: twice this."})
    bandwidth_repeats: int = field(default=3, metadata={
        "help": "Timed passes per bandwidth kernel (after one untimed pass); the median is kept."})
    bandwidth_cache_dir: str = field(default="outputs/bandwidth", metadata={
        "help": "Folder (relative: to the launch directory) of the measured bandwidths, one JSON per host and "
                "device. Delete a file to measure that device again."})

    def __post_init__(self) -> None:
        require(math.isfinite(self.interval_s) and self.interval_s > 0, "telemetry.interval_s", self.interval_s,
                "must be a finite number of seconds > 0")
        require(math.isfinite(self.npu_smi_timeout_s) and self.npu_smi_timeout_s > 0, "telemetry.npu_smi_timeout_s",
                self.npu_smi_timeout_s, "must be a finite number of seconds > 0")
        require(bool(self.rapl_root.strip()), "telemetry.rapl_root", self.rapl_root,
                "must name a folder (the default is /sys/class/powercap)")
        require(math.isfinite(self.bandwidth_array_gb) and self.bandwidth_array_gb > 0, "telemetry.bandwidth_array_gb",
                self.bandwidth_array_gb, "must be a finite number of GB > 0 (1 or more measures memory, not caches)")
        require_positive("telemetry.bandwidth_repeats", self.bandwidth_repeats)
        require(bool(self.bandwidth_cache_dir.strip()), "telemetry.bandwidth_cache_dir", self.bandwidth_cache_dir,
                "must name a folder (the default is outputs/bandwidth)")
