"""``runtime=onnxruntime``: the exported ONNX graph in an onnxruntime ``InferenceSession``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ascend_lab.config.runtime import NAME_HELP, RuntimeConfig
from ascend_lab.errors import require_choice, require_positive

GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")


@dataclass
class OnnxRuntimeConfig(RuntimeConfig):
    name: str = field(default="onnxruntime", metadata=NAME_HELP)
    _target_: str = "ascend_lab.runtimes.onnxruntime.runtime.OnnxRuntime"
    intra_op_threads: int = field(
        default=0,
        metadata={"help": "intra-op threads; 0: one per physical core (a second thread per SMT sibling only "
                          "competes for the same core's load ports, and decode is memory-bound). Sessions run "
                          "sequentially (ascend_lab/runtimes/onnxruntime/runtime.py)."})
    allow_spinning: bool = field(
        default=True,
        metadata={"help": "true: the intra-op workers busy-wait between kernels (onnxruntime's "
                          "session.intra_op.allow_spinning), waking at once for the next; false: they sleep. "
                          "Where other processes want the same cores, a spinning worker takes their time and is "
                          "preempted in turn, and every step slows down: set false on a host whose cores are shared."})
    inter_op_threads: int = field(
        default=0, metadata={"help": "inter-op threads; 0: 1 (the decoder graph is a chain)."})
    graph_optimization: str = field(
        default="all", metadata={"help": "graph optimisation level: disable, basic, extended, all."},
    )
    transformer_optimize: bool = field(
        default=True,
        metadata={"help": "load the export after onnxruntime's transformer optimizer (RMSNorms and residual adds "
                          "fused into SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization) and with each "
                          "layer's attention fused into one GroupQueryAttention that writes the cache in place "
                          "(ascend_lab/export/fused_attention.py): fewer nodes per step, and attention over the "
                          "context only, not the whole cache. Built once and cached beside the export. Its fused ops "
                          "are onnxruntime's own (com.microsoft), so it is never what ATC compiles; float32 logits "
                          "differ from the plain graph's in the last bits. false: load the export as it is."},
    )

    @property
    def artifact(self) -> str:
        """The export in model.dtype, through the transformer optimizer where ``transformer_optimize`` says."""
        return "optimized_onnx" if self.transformer_optimize else "onnx"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("runtime.graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATIONS)
        require_positive("runtime.intra_op_threads", self.intra_op_threads, allow_zero=True)
        require_positive("runtime.inter_op_threads", self.inter_op_threads, allow_zero=True)
