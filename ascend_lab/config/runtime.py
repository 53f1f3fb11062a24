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
    intra_op_threads: int = field(
        default=0, metadata={"help": "onnxruntime intra-op threads / torch.set_num_threads; 0: the library default "
                                     "(all cores)."})
    inter_op_threads: int = field(default=0, metadata={"help": "onnxruntime inter-op threads; 0: default."})
    graph_optimization: str = field(
        default="all", metadata={"help": "onnxruntime graph optimisation level: disable, basic, extended, all."},
    )
    graph_capture: bool = field(
        default=False,
        metadata={"help": "torch generate: static KV cache with the decode step captured as one graph "
                          "(CUDA graphs / NPU graphs; on the CPU the same static step runs eagerly, with a note)."},
    )
    compile: bool = field(
        default=False,
        metadata={"help": "torch generate: torch.compile the static-cache decode step (kernel fusion; q/k/v and "
                          "gate/up projections concatenated, one extra copy of those weights); with "
                          "graph_capture this is the fast accelerator path. Costs compile time at load."},
    )

    def __post_init__(self) -> None:
        require_choice("runtime.name", self.name, RUNTIME_NAMES)
        require_choice("runtime.graph_optimization", self.graph_optimization, ORT_GRAPH_OPTIMIZATIONS)
        require_positive("runtime.intra_op_threads", self.intra_op_threads, allow_zero=True)
        require_positive("runtime.inter_op_threads", self.inter_op_threads, allow_zero=True)
