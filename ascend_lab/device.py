"""The device layer: resolving ``device=auto|cpu|cuda|npu``, synchronising, memory figures, timing.

``auto`` prefers an Ascend NPU (torch_npu imports and reports a device), then CUDA, then the CPU,
and keeps the reason for its choice so runs can record it. Asking for ``npu`` or ``cuda`` where it
is not usable raises :class:`ToolchainError` saying what is missing.

Timing is honest on every backend: CUDA/NPU events on the device's stream where they exist,
otherwise the host clock read after a device synchronise (``host_timer``; also the right clock for
runtimes that run on their own streams, like onnxruntime and pyACL, whose calls return when done).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Iterator

from ascend_lab.cann.toolkit import set_env_locations
from ascend_lab.config.device import DeviceConfig
from ascend_lab.errors import ToolchainError

MB = 1024 * 1024


def probe_npu() -> tuple[bool, str]:
    """Whether torch_npu is usable here, and why (not)."""
    try:
        import torch_npu  # noqa: F401  (registers the "npu" device and torch.npu)
    except ModuleNotFoundError as exc:
        if exc.name == "torch_npu":
            return False, "torch_npu is not installed (on an Ascend host: pip install 'ascend_lab[npu]')"
        return False, _cann_not_loaded(exc)
    except Exception as exc:  # ImportError for libhccl/libascendcl, or _cann_package_check's Exception
        return False, _cann_not_loaded(exc)
    import torch

    if not torch.npu.is_available():
        return False, "torch_npu loaded but reports no NPU (device_count() == 0): check the driver with `npu-smi info`"
    return True, f"torch_npu {torch_npu.__version__} reports {torch.npu.device_count()} NPU(s)"


def _cann_not_loaded(exc: BaseException) -> str:
    locations = ", ".join(str(p) for p in set_env_locations())
    return (f"torch_npu is installed but the CANN environment is not loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); run `source set_env.sh` from one of: {locations}")


def probe_cuda() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        return False, ("torch has no CUDA support (CPU build)" if built is None
                       else f"torch is built with CUDA {built} but sees no GPU (driver or CUDA_VISIBLE_DEVICES)")
    return True, f"CUDA {torch.version.cuda} reports {torch.cuda.device_count()} GPU(s)"


@dataclass(frozen=True)
class MemoryStats:
    allocated_mb: float
    reserved_mb: float
    peak_allocated_mb: float
    peak_reserved_mb: float


@dataclass(frozen=True)
class Device:
    kind: str  # "npu", "cuda" or "cpu"
    index: int
    reason: str

    @property
    def label(self) -> str:
        """``cpu``, ``cuda:0``, ``npu:1``: what ``str(torch_device)`` says, without importing torch."""
        return "cpu" if self.kind == "cpu" else f"{self.kind}:{self.index}"

    @property
    def torch_device(self):
        import torch

        return torch.device("cpu") if self.kind == "cpu" else torch.device(self.kind, self.index)

    @property
    def backend(self) -> ModuleType | None:
        """``torch.cuda`` or ``torch.npu`` (same API); None on the CPU."""
        if self.kind == "cpu":
            return None
        import torch

        return getattr(torch, self.kind)

    @property
    def is_accelerator(self) -> bool:
        return self.kind != "cpu"

    def name(self) -> str:
        if self.backend is None:
            import platform

            return platform.processor() or platform.machine()
        return self.backend.get_device_name(self.index)

    def count(self) -> int:
        return 0 if self.backend is None else self.backend.device_count()

    def synchronize(self) -> None:
        if self.backend is not None:
            self.backend.synchronize(self.index)

    def memory(self) -> MemoryStats:
        if self.backend is None:
            return MemoryStats(0.0, 0.0, 0.0, 0.0)
        b, i = self.backend, self.index
        return MemoryStats(b.memory_allocated(i) / MB, b.memory_reserved(i) / MB,
                           b.max_memory_allocated(i) / MB, b.max_memory_reserved(i) / MB)

    def reset_peak_memory(self) -> None:
        if self.backend is not None:
            self.backend.reset_peak_memory_stats(self.index)

    def timer(self) -> "EventTimer | HostTimer":
        """Device events on the current stream where the backend has them, else the host clock."""
        return EventTimer(self.backend) if self.backend is not None else HostTimer(self.synchronize)

    def host_timer(self) -> "HostTimer":
        """Host clock bracketed by device synchronisation."""
        return HostTimer(self.synchronize)


class EventTimer:
    """Times the enclosed device work with a pair of CUDA/NPU events; ``elapsed_ms`` after exit."""

    def __init__(self, backend: ModuleType) -> None:
        self._start = backend.Event(enable_timing=True)
        self._end = backend.Event(enable_timing=True)
        self.elapsed_ms = float("nan")

    def __enter__(self) -> "EventTimer":
        self._start.record()
        return self

    def __exit__(self, *exc) -> None:
        self._end.record()
        self._end.synchronize()
        self.elapsed_ms = self._start.elapsed_time(self._end)


class HostTimer:
    """Host ``perf_counter`` with a device synchronise before each clock read."""

    def __init__(self, synchronize: Callable[[], None] = lambda: None) -> None:
        self._synchronize = synchronize
        self.elapsed_ms = float("nan")

    def __enter__(self) -> "HostTimer":
        self._synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._synchronize()
        self.elapsed_ms = (time.perf_counter() - self._t0) * 1e3


def measure(fn: Callable[[], object], timer: Callable[[], "EventTimer | HostTimer"], *, warmup: int,
            iterations: int, min_duration_s: float = 0.0) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then time it until both ``iterations`` runs and
    ``min_duration_s`` seconds are reached; returns the per-run milliseconds."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < iterations or time.perf_counter() - started < min_duration_s:
        with timer() as t:
            fn()
        samples.append(t.elapsed_ms)
    return samples


def iter_auto_candidates() -> Iterator[tuple[str, Callable[[], tuple[bool, str]]]]:
    yield "npu", probe_npu
    yield "cuda", probe_cuda


def resolve_device(cfg: DeviceConfig) -> Device:
    """Pick the device ``cfg`` asks for; float32 becomes torch's default dtype (NPUs have no float64).

    device=cpu imports no torch: a runtime that does not compute in torch (onnxruntime) then never loads it
    (its libraries alone hold about half a gigabyte of resident memory)."""
    if cfg.name == "cpu":
        return Device("cpu", 0, "device=cpu requested")
    import torch

    torch.set_default_dtype(torch.float32)
    if cfg.name == "auto":
        skipped = []
        for kind, probe in iter_auto_candidates():
            ok, why = probe()
            if ok:
                device = Device(kind, cfg.index, f"auto: {why}")
                _check_index(device)
                return device
            skipped.append(f"{kind}: {why}")
        return Device("cpu", 0, "auto: no accelerator (" + "; ".join(skipped) + ")")
    ok, why = probe_npu() if cfg.name == "npu" else probe_cuda()
    if not ok:
        raise ToolchainError(f"device={cfg.name} is not usable here: {why}. Use device=auto or device=cpu to run anyway.")
    device = Device(cfg.name, cfg.index, f"device={cfg.name} requested: {why}")
    _check_index(device)
    return device


def pyacl_host(npu_index: int) -> Device:
    """The torch side of a job whose runtime reaches NPU ``npu_index`` through pyACL alone (runtime=acl): the
    CPU. torch_npu is never imported there, so pyACL alone owns ``acl.init`` and its teardown in the process;
    the runtime times with the host clock and the roofline's bandwidth is pyACL's own device-to-device copy."""
    return Device("cpu", 0, f"runtime=acl runs the .om on NPU {npu_index} with pyACL; torch's own work stays on cpu "
                            "(torch_npu is not imported beside pyACL)")


def _check_index(device: Device) -> None:
    if device.index >= device.count():
        raise ToolchainError(f"device.index={device.index} but only {device.count()} {device.kind} device(s) exist")
    device.backend.set_device(device.index)
