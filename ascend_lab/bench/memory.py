"""Memory figures of a benchmark: this process's host RSS peak and the device peak (the torch allocator's
counter, where the runtime allocates through torch).

The host peak is the kernel's own high-water mark of the process's RSS (``VmHWM`` in ``/proc/self/status``),
reset at the start of what is measured by writing ``5`` to ``/proc/self/clear_refs`` (Linux 4.0 and later;
proc(5), "/proc/pid/clear_refs"). It is exact and needs no thread polling RSS beside the telemetry sampler,
which samples the host's memory for the run's curves. Where the mark cannot be reset (no ``/proc``) the peak
is the process's since it started (``getrusage``'s ``ru_maxrss``).
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

MB = 1024 * 1024
PROC_SELF = Path("/proc/self")


def rss_mb() -> float:
    """This process's resident set size now, in MB."""
    import psutil

    return psutil.Process().memory_info().rss / MB


def reset_peak_rss() -> bool:
    """Start the host peak afresh at the current RSS; False where the kernel's mark cannot be reset."""
    try:
        (PROC_SELF / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's peak RSS in MB since :func:`reset_peak_rss` (see the module docstring)."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+) kB", (PROC_SELF / "status").read_text(), re.MULTILINE)
    except OSError:
        found = None
    if found:
        return int(found.group(1)) * 1024 / MB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def device_peak_mb(device, runtime_name: str) -> float | None:
    """Peak device memory since the last ``device.reset_peak_memory()``, or None where no counter
    sees the runtime's allocations (the CPU, or onnxruntime/pyACL, which bypass torch's allocator)."""
    if not device.is_accelerator or runtime_name != "torch":
        return None
    return device.memory().peak_allocated_mb
