"""Profiling the torch runtime: ``torch.profiler`` on the CPU and CUDA, ``torch_npu.profiler`` on an NPU.

CPU / CUDA: one profiler session around the whole profiled pass, each phase a ``record_function`` range
(:func:`~ascend_lab.profiling.events.range_name`), exported as one Chrome trace ``torch.pt.trace.json``: the name
TensorBoard's profiler plugin looks for, and a file Perfetto opens; the phases show as ranges in it.

NPU: ``torch_npu.profiler.profile`` with ``experimental_config=_ExperimentalConfig(profiler_level=...,
aic_metrics=...)`` and ``on_trace_ready=tensorboard_trace_handler(dir)`` (hiascend Pytorch docs ptaoplist_000253,
ptaoplist_000996), one session per phase so that each phase's
``ASCEND_PROFILER_OUTPUT/kernel_details.csv`` holds only its own kernels (CANN's device timestamps and the host's
ranges are on different clocks).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ascend_lab.config.profile import ProfileConfig
from ascend_lab.profiling import msprof
from ascend_lab.profiling.events import MSPROF, TORCH, TraceFile, range_name
from ascend_lab.runtimes.torch import trace

CHROME_TRACE = "torch.pt.trace.json"


class TorchProfiling:
    """The profile session :meth:`TorchRuntime.profiled` yields (see the module docstring)."""

    def __init__(self, runtime, device_kind: str, out_dir: Path, settings: ProfileConfig) -> None:
        self.runtime = runtime
        self.device_kind = device_kind
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.traces: list[TraceFile] = []
        self._profiler = None

    @contextmanager
    def session(self) -> Iterator["TorchProfiling"]:
        """The whole profiled pass (CPU/CUDA: the one profiler session; NPU: sessions open per phase)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.device_kind == "npu":
            yield self
            return
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device_kind == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        else:
            from ascend_lab.quiet import quiet_profiler_probe

            quiet_profiler_probe()
        with torch.profiler.profile(activities=activities, record_shapes=self.settings.record_shapes,
                                    with_stack=self.settings.with_stack) as profiler:
            self._profiler = profiler
            yield self
        path = self.out_dir / CHROME_TRACE
        profiler.export_chrome_trace(str(path))
        self.traces.append(TraceFile(path, TORCH, parser=trace.parse))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.device_kind != "npu":
            import torch

            with torch.profiler.record_function(range_name(name)):
                yield
            return
        trace_dir = self.out_dir / name
        with _npu_profiler(self.settings, trace_dir):
            yield
        self.traces.append(TraceFile(trace_dir, MSPROF, phase=name, parser=msprof.parse))


def _npu_profiler(settings: ProfileConfig, trace_dir: Path):
    import torch_npu

    profiler = torch_npu.profiler
    experimental = profiler._ExperimentalConfig(
        profiler_level=getattr(profiler.ProfilerLevel, settings.torch_npu_level),
        aic_metrics=getattr(profiler.AiCMetrics, settings.aic_metrics), l2_cache=False)
    return profiler.profile(activities=[profiler.ProfilerActivity.CPU, profiler.ProfilerActivity.NPU],
                            record_shapes=settings.record_shapes, with_stack=settings.with_stack,
                            experimental_config=experimental,
                            on_trace_ready=profiler.tensorboard_trace_handler(str(trace_dir)))
