"""`profile` group: one switch that explains where a run's time goes (``profile=on``).

When enabled, task=bench (forward and generate) and task=infer run one more pass *after* the timed one,
under the runtime's own profiler (torch.profiler / torch_npu.profiler, onnxruntime's built-in profiling,
the pyACL profiling API): no warm-up, its latency logged apart under ``profile_*`` names, a generation's
prefill and decode separated. The traces become one operator table (``ops.csv``), a chart of the top
operators and three metrics (:mod:`ascend_lab.profiling`). Profiling never touches the timed figures,
so this group is not part of a job's identity.

These fields are the one source of the defaults; ``conf/profile/*.yaml`` state only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ascend_lab.errors import require_choice, require_positive

# torch_npu.profiler.ProfilerLevel members (hiascend Pytorch docs, ptaoplist_000996):
# Level0 collects the framework's and the NPU's operator timings, Level1 adds CANN API and AI Core metrics,
# Level2 adds runtime and AI CPU data.
TORCH_NPU_LEVELS = ("Level0", "Level1", "Level2")
# AI Core metric sets, by torch_npu.profiler.AiCMetrics member name; the pyACL profiling API takes the same sets
# as aclprofAicoreMetrics values (aclpythondevg "aclprofAicoreMetrics": ARITHMETIC_UTILIZATION=0,
# PIPE_UTILIZATION=1, MEMORY_BANDWIDTH=2, L0B_AND_WIDTH=3, RESOURCE_CONFLICT_RATIO=4, MEMORY_UB=5, L2_CACHE=6,
# MEMORY_ACCESS=8, NONE=0xFF). "AiCoreNone" collects no AI Core metrics.
AIC_METRICS = ("PipeUtilization", "ArithmeticUtilization", "Memory", "MemoryL0", "ResourceConflictRatio",
               "MemoryUB", "L2Cache", "MemoryAccess", "AiCoreNone")


@dataclass
class ProfileConfig:
    group: ClassVar[str] = "profile"

    enabled: bool = field(default=False, metadata={
        "help": "Run a profiled pass after the timed one (profile=on sets it). Off by default: a profiler slows "
                "every operator it records."})
    steps: int = field(default=1, metadata={
        "help": "How much the profiled pass runs: generations (generate, task=infer) or forward passes (forward). "
                "One generation already holds a prefill and benchmark.new_tokens - 1 decode steps."})
    decode_steps: Optional[int] = field(default=None, metadata={
        "help": "Decode steps profiled per generation (the first ones); null: all of them. Fewer keeps the "
                "trace small for long generations."})
    top_n: int = field(default=10, metadata={
        "help": "Operators shown in the console table and the bar chart (ops.csv lists them all)."})
    torch_npu_level: str = field(default="Level1", metadata={
        "help": "runtime=torch on an NPU: torch_npu.profiler's profiler_level (Level0, Level1, Level2)."})
    aic_metrics: str = field(default="PipeUtilization", metadata={
        "help": "AI Core metrics collected on an NPU (torch_npu's AiCMetrics; pyACL's aclprofAicoreMetrics for "
                "runtime=acl): " + ", ".join(AIC_METRICS) + "."})
    record_shapes: bool = field(default=False, metadata={
        "help": "runtime=torch: record operator input shapes in the trace (larger trace, some overhead)."})
    with_stack: bool = field(default=False, metadata={
        "help": "runtime=torch: record Python call stacks in the trace (much larger trace)."})
    msprof_export: bool = field(default=True, metadata={
        "help": "runtime=acl: when the pyACL profiling API left raw data only, run CANN's `msprof --export=on` on "
                "it to get op_summary_*.csv (needs the toolkit's msprof; otherwise the raw PROF_* folder is "
                "logged and the table is skipped with a note)."})

    def __post_init__(self) -> None:
        require_positive("profile.steps", self.steps)
        if self.decode_steps is not None:
            require_positive("profile.decode_steps", self.decode_steps, allow_zero=True)
        require_positive("profile.top_n", self.top_n)
        require_choice("profile.torch_npu_level", self.torch_npu_level, TORCH_NPU_LEVELS)
        require_choice("profile.aic_metrics", self.aic_metrics, AIC_METRICS)
