"""Memory figures of a benchmark: the host RSS peak (sampled in a background thread) and the
device peak (the torch allocator's counter, where the runtime allocates through torch).

A thread in the same process is enough here: torch, onnxruntime and pyACL release the GIL while
they compute, so the sampler keeps ticking during the work it measures.
"""

from __future__ import annotations

import threading
from typing import Optional

MB = 1024 * 1024


def rss_mb() -> float:
    """This process's resident set size now, in MB."""
    import psutil

    return psutil.Process().memory_info().rss / MB


class HostMemorySampler:
    """``with HostMemorySampler() as s: ...`` then ``s.peak_mb``; polls RSS every ``interval_s``."""

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, rss_mb())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> "HostMemorySampler":
        self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()


def device_peak_mb(device, runtime_name: str) -> float | None:
    """Peak device memory since the last ``device.reset_peak_memory()``, or None where no counter
    sees the runtime's allocations (the CPU, or onnxruntime/pyACL, which bypass torch's allocator)."""
    if not device.is_accelerator or runtime_name != "torch":
        return None
    return device.memory().peak_allocated_mb
