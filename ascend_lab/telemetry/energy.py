"""Energy of a benchmark's timed window: where each joule comes from, and the figures logged per job.

**Which power sources count.** A job's energy is that of the host's processors its device index reaches: the
CPU package (RAPL) and, where the host has one, the accelerator at that index (the NPU chip npu-smi reports,
the GPU NVML reports). Every source that can be read is summed into ``energy_j``; each is also logged on its
own (``energy_j_cpu``, ``energy_j_npu``, ``energy_j_cuda``). A CPU job on an Ascend host therefore counts the
(idle) NPU too: the figure is what the host's processors drew while the job ran, whichever did the work. A
source that cannot be read is left out, never counted as 0, and a tag says why (``energy.<source>.absent``);
with no readable source there is no energy figure at all and ``energy.absent`` says why.

**How each source is read.**

- CPU: RAPL's cumulative counters, ``<rapl_root>/intel-rapl:<n>/energy_uj`` of every package domain (the
  top-level ``intel-rapl:<n>`` whose ``name`` starts with ``package``; core/uncore/dram sub-domains are inside
  or beside it and would count twice), read at the window's start and end. A counter that wrapped (end <
  start) went through ``max_energy_range_uj`` once: delta = end + range − start. Two wraps inside one window
  cannot be told from one; at a package's typical range (~262 kJ) that needs a window of tens of minutes at
  full power. Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable by root only.
- CUDA: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta and newer) at both
  ends; on older cards the power samples of MLflow's GPU monitor, integrated.
- NPU: the power samples of the NPU monitor (``npu-smi info -t power``), integrated (trapezoids). The window's
  start and end take a sample each, so the integral covers the whole window however short.

Nothing here reads a counter per benchmark iteration: counters are read at the window's two ends, and the
sampling thread runs beside the loop (see :mod:`ascend_lab.telemetry.session`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

RAPL_DOMAIN = re.compile(r"intel-rapl:\d+$")
UJ_PER_J = 1e6
MJ_PER_J = 1e3
# The per-sample power metrics each source's monitor logs (system/<name>); {i}: the chip's index.
POWER_KEYS = {"cpu": "cpu_package_power_watts", "npu": "npu_{i}_power_usage_watts", "cuda": "gpu_{i}_power_usage_watts"}
UTILIZATION_KEYS = {"cpu": "cpu_utilization_percentage", "npu": "npu_{i}_utilization_percentage",
                    "cuda": "gpu_{i}_utilization_percentage"}
MEMORY_KEYS = {"npu": "npu_{i}_memory_usage_megabytes", "cuda": "gpu_{i}_memory_usage_megabytes"}


@dataclass(frozen=True)
class WorkDevice:
    """Where a job computes: ``kind`` cpu | cuda | npu, and the chip index the power sources use (the index
    after ``ASCEND_RT_VISIBLE_DEVICES`` / ``CUDA_VISIBLE_DEVICES``, which NVML and npu-smi do not apply)."""

    kind: str
    index: int
    reason: str


def physical_index(index: int, visible_env: str) -> int:
    """``index`` among the devices ``visible_env`` (e.g. ``ASCEND_RT_VISIBLE_DEVICES=4,5``) leaves visible, as
    the host-wide index npu-smi and NVML count in; ``index`` itself where the variable is unset or not a list
    of integers (UUIDs)."""
    visible = [v.strip() for v in os.environ.get(visible_env, "").split(",") if v.strip()]
    if index < len(visible) and all(v.isdigit() for v in visible):
        return int(visible[index])
    return index


# ------------------------------------------------------------------------------------------------ RAPL


def rapl_delta_uj(start: int, end: int, max_range_uj: int) -> int:
    """Energy between two readings of one RAPL counter, across one wrap-around."""
    return end - start if end >= start else end + max_range_uj - start


class RaplReader:
    """The package domains under ``root``; ``available`` False with ``reason`` where they cannot be read."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.domains: list[Path] = []
        self.max_range_uj: dict[Path, int] = {}
        self.reason: str | None = None
        if not self.root.is_dir():
            self.reason = (f"no RAPL counters: {self.root} does not exist (no powercap driver: a virtual machine, "
                           "a container without /sys/class/powercap, or a CPU without RAPL)")
            return
        candidates = sorted(p for p in self.root.iterdir() if RAPL_DOMAIN.match(p.name))
        packages = [p for p in candidates if _read_text(p / "name", "").startswith("package")]
        if not packages:
            self.reason = (f"no RAPL package domain under {self.root} (found: "
                           f"{', '.join(p.name for p in candidates) or 'none'})")
            return
        try:
            for domain in packages:
                int((domain / "energy_uj").read_text())
                self.max_range_uj[domain] = int((domain / "max_energy_range_uj").read_text())
        except PermissionError:
            self.reason = (f"{packages[0] / 'energy_uj'} is not readable by this user (root only since Linux 5.10, "
                           "CVE-2020-8694); run as root or grant read access (chmod a+r) to measure CPU energy")
            return
        except (OSError, ValueError) as exc:
            self.reason = f"RAPL counters under {self.root} could not be read: {exc}"
            return
        self.domains = packages

    @property
    def available(self) -> bool:
        return bool(self.domains)

    def read(self) -> dict[Path, int] | None:
        """Every package's counter (µJ) now, or None where a read fails (the window then has no CPU figure)."""
        try:
            return {d: int((d / "energy_uj").read_text()) for d in self.domains}
        except (OSError, ValueError):
            return None

    def joules(self, start: Mapping[Path, int], end: Mapping[Path, int]) -> float:
        return sum(rapl_delta_uj(start[d], end[d], self.max_range_uj[d]) for d in self.domains) / UJ_PER_J


def _read_text(path: Path, default: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


# ------------------------------------------------------------------------------------------------ NVML


class NvmlEnergy:
    """NVML's total-energy counters; ``reason`` says why there are none (no nvidia-ml-py, no driver)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._nvml = None
        self.count = 0
        try:
            import pynvml

            pynvml.nvmlInit()
            self.count = pynvml.nvmlDeviceGetCount()
            self._nvml = pynvml
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) is not installed: pip install nvidia-ml-py"
        except Exception as exc:  # NVMLError: no driver, no GPU
            self.reason = f"NVML could not start: {exc}"

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def read_mj(self, index: int) -> int | None:
        """GPU ``index``'s counter (mJ since the driver loaded), or None where the card has none (pre-Volta)."""
        if self._nvml is None or index >= self.count:
            return None
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle))
        except Exception:  # NVMLError_NotSupported
            return None


# ------------------------------------------------------------------------------------------------ the window


def trapezoid_j(points: Sequence[tuple[float, float]]) -> float:
    """∫ power dt over (seconds, watts) points in time order."""
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(points, points[1:]))


@dataclass
class Window:
    """The timed window: its ends (monotonic seconds), the counters read there, and the samples taken in it
    (each ``(t, {metric: value})``, the window's own two edge samples included)."""

    t0: float
    t1: float
    rapl_start: dict | None = None
    rapl_end: dict | None = None
    nvml_start: dict[int, int | None] | None = None  # GPU index → NVML energy counter (mJ)
    nvml_end: dict[int, int | None] | None = None
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.t1 - self.t0

    def series(self, key: str) -> list[tuple[float, float]]:
        return [(t, s[key]) for t, s in self.samples if key in s]


@dataclass
class SourceEnergy:
    source: str  # cpu | npu | cuda
    joules: float
    method: str
    power_key: str | None  # the per-sample power metric, for the window's peak


@dataclass
class Figures:
    """What a window contributes to a bench job: metrics and tags."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def combine(window: Window, sources: Iterable[SourceEnergy], absent: Mapping[str, str], tokens: int) -> Figures:
    """The energy figures of ``window`` from the sources read (see the module docstring)."""
    read = list(sources)
    figures = Figures()
    for name, reason in absent.items():
        figures.tags[f"energy.{name}.absent"] = reason
    if not read:
        figures.tags["energy.absent"] = "; ".join(f"{k}: {v}" for k, v in absent.items()) or "no power source"
        return figures
    seconds = window.seconds
    total = sum(s.joules for s in read)
    m = figures.metrics
    m.update({"energy_j": total, "energy_window_s": seconds, "power_w_mean": total / seconds if seconds > 0 else 0.0})
    if tokens > 0:
        m["joules_per_token"] = total / tokens
    for s in read:
        m[f"energy_j_{s.source}"] = s.joules
        m[f"power_w_mean_{s.source}"] = s.joules / seconds if seconds > 0 else 0.0
        peak = max((p for _, p in window.series(s.power_key)), default=None) if s.power_key else None
        if peak is not None:
            m[f"power_w_max_{s.source}"] = peak
    peak = _peak_total(window, [s.power_key for s in read])
    if peak is not None:
        m["power_w_max"] = peak
    figures.tags["energy.sources"] = "; ".join(f"{s.source}: {s.method}" for s in read)
    return figures


def _peak_total(window: Window, keys: list[str | None]) -> float | None:
    """The highest summed power of one sample holding every source's power (None when no sample has all)."""
    if not keys or any(k is None for k in keys):
        return None
    totals = [sum(s[k] for k in keys) for t, s in window.samples if all(k in s for k in keys) and t > window.t0]
    return max(totals, default=None)


__all__ = ["Figures", "MEMORY_KEYS", "MJ_PER_J", "NvmlEnergy", "POWER_KEYS", "RaplReader", "SourceEnergy",
           "UTILIZATION_KEYS", "Window", "WorkDevice", "combine", "physical_index", "rapl_delta_uj", "trapezoid_j"]
