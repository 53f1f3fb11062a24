"""`runtime` group: what executes the model in task=infer / task=bench."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.errors import require_choice, require_positive

RUNTIME_NAMES = ("auto", "torch", "onnxruntime", "acl")
ORT_GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


@dataclass
class RuntimeConfig:
    group: ClassVar[str] = "runtime"

    name: str = field(
        default="auto",
        metadata={"help": "auto (acl where a compiled .om and pyACL exist, else onnxruntime), torch, "
                          "onnxruntime or acl."},
    )
    intra_op_threads: int = field(default=0, metadata={"help": "onnxruntime / torch intra-op threads; 0: all cores."})
    inter_op_threads: int = field(default=0, metadata={"help": "onnxruntime inter-op threads; 0: default."})
    graph_optimization: str = field(
        default="all", metadata={"help": "onnxruntime graph optimisation level: disable, basic, extended, all."},
    )
    graph_capture: bool = field(
        default=False,
        metadata={"help": "torch on an accelerator: static KV cache and the decode step captured as a graph "
                          "(CUDA graphs / NPU graph mode)."},
    )

    def __post_init__(self) -> None:
        require_choice("runtime.name", self.name, RUNTIME_NAMES)
        require_choice("runtime.graph_optimization", self.graph_optimization, ORT_GRAPH_OPTIMIZATIONS)
        require_positive("runtime.intra_op_threads", self.intra_op_threads, allow_zero=True)
        require_positive("runtime.inter_op_threads", self.inter_op_threads, allow_zero=True)
