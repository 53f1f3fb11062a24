"""`export` group: PyTorch → ONNX export of the model (task=export)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from ascend_lab.errors import require, require_choice

EXPORT_GRAPHS = ("hidden_states", "logits", "kv_cache")
EXPORTERS = ("torchscript", "dynamo")
EXTERNAL_DATA_MODES = ("auto", "always", "never")
QUANTIZE_MODES = ("none", "int8", "int4")
# export.quantize=int4 only: the keys and their defaults (onnxruntime-genai builder's int4 scheme).
INT4_KEYS = ("int4_block_size", "int4_accuracy_level")
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
CACHE_LAYOUTS = ("auto", "rank5", "rank4")


@dataclass
class ExportConfig:
    group: ClassVar[str] = "export"

    graph: str = field(
        default="kv_cache",
        metadata={"help": "hidden_states: the walkthrough's wrapper (last_hidden_state, no cache); "
                          "logits: LM logits for every position, no cache; kv_cache: the generation graph of "
                          "ascend_lab.graph_contract (fixed-capacity cache in one tensor, positions as an input, "
                          "the new tokens' keys/values and the last position's logits and greedy token out), "
                          "made for ATC and run the same way on torch and onnxruntime."},
    )
    kv_capacity: int = field(
        default=1024,
        metadata={"help": "kv_cache graph: cache slots (padded prompt + generated tokens) one generation may hold. "
                          "ATC compiles the cache at exactly this size (static shapes); torch and onnxruntime "
                          "allocate only what a generation needs, up to it. Not part of the ONNX file (its cache "
                          "dim is symbolic), so changing it never re-exports."},
    )
    prefill_chunks: List[int] = field(
        default_factory=lambda: [16, 128],
        metadata={"help": "kv_cache graph: prompt tokens per prefill execution of a compiled .om; with the decode "
                          "step's 1 they are ATC's --dynamic_dims gears. A prompt is left-padded to the length the "
                          "chunks cover in the fewest executions (graph_contract.plan_prefill's cost model: a "
                          "496-token prompt is 4 runs of 128), largest first. onnxruntime and torch, whose graph "
                          "takes any length, run a prompt in one execution. Not part of the ONNX file."},
    )
    # 14: ATC's parser looks ops up per opset (ai.onnx::<opset>::<op>) and the ONNX operator pages list every op of
    # the kv_cache graph at v14 (ReduceMean stops at v16, Sub at v15; atlasoxol_09_0123/_0159); the ATC pages give
    # 8.0.RC v11–v15 and 7.0/9.x v9/v11–v18; Tlntin/qwen-ascend-llm export/export_onnx.py exports Qwen at 14.
    opset: int = field(default=14, metadata={"help": "ONNX opset. ATC parses an op only at the opsets its "
                                                    "operator page lists (task=compile checks them): 14 is one "
                                                    "every CANN from 7.0 takes for the kv_cache graph."})
    cache_layout: str = field(default="auto", metadata={
        "help": "kv_cache graph: the cache tensor's layout. rank5 [capacity, b, 2·layers, kv_heads, head_dim]; rank4 "
                "[capacity, b, 2·layers, kv_heads·head_dim] for CANN whose --dynamic_dims takes inputs of rank <= 4 "
                "(7.0, 8.0.RC1/RC2); auto picks by the CANN version doctor reports (ascend_lab.export.cache_layout)."})
    do_constant_folding: bool = field(default=False, metadata={"help": "The walkthrough turns it off for ATC."})
    exporter: str = field(default="torchscript", metadata={"help": "torchscript (torch.onnx TorchScript) or dynamo."})
    dynamic_axes: bool = field(default=True, metadata={"help": "Dynamic batch and sequence axes (named, recorded)."})
    external_data: str = field(
        default="auto",
        metadata={"help": "Weights in a side file: auto (when the model is over 2 GB), always, never."},
    )
    parity_tol: Optional[float] = field(
        default=None,
        metadata={"help": "Max |onnxruntime − torch| over all outputs allowed by the parity check; null: "
                          "per-dtype default (float32 1e-3, float16 5e-2, bfloat16 0.25, int8-quantised 1.0)."},
    )
    parity_batch_size: int = field(default=2, metadata={"help": "Batch of the seeded parity inputs."})
    parity_seq_len: int = field(default=8, metadata={"help": "Sequence length of the seeded parity inputs."})
    cache_dir: str = field(default="outputs/export_cache", metadata={"help": "Content-addressed export cache."})
    quantize: str = field(
        default="none",
        metadata={"help": "Weight quantisation of the exported graph with onnxruntime's quantisers "
                          "(ascend_lab/export/quantize.py): none; int8 (MatMulNBits 8-bit, block 32); int4 "
                          "(MatMulNBits 4-bit, export.int4_block_size, export.int4_accuracy_level). The quantised "
                          "ops are onnxruntime's own (com.microsoft): onnxruntime only, never ATC."})
    int4_block_size: int = field(
        default=32,
        metadata={"help": "export.quantize=int4 only: input channels sharing one weight scale (MatMulNBits "
                          "block_size; a power of 2, at least 16). Smaller blocks: closer to float, more scales."})
    int4_accuracy_level: int = field(
        default=4,
        metadata={"help": "export.quantize=int4 only: MatMulNBits accuracy_level, the precision activations are "
                          "computed in: 0 unset (the weights' float type), 1 float32, 2 float16, 3 bfloat16, "
                          "4 int8 (blockwise-quantised activations × int4 weights: the fastest CPU kernels)."})
    layer_outputs: bool = field(
        default=False,
        metadata={"help": "kv_cache graph: export its debug variant, which also outputs each decoder layer's hidden "
                          "state at the last position (layer_hidden_states [layers, batch, hidden]); same weights, "
                          "same ops, its own cache entry. task=accuracy's layer report sets it itself; on its own it "
                          "only costs an extra output."},
    )
    fuse_projections: bool = field(
        default=False,
        metadata={"help": "kv_cache graph: store each layer's q|k|v and gate|up weights concatenated, so a decode "
                          "step runs one MatMul (and a Split) where it ran three and two. Same arithmetic per "
                          "output; fewer, larger kernels. The torch runtime keeps the separate weights."},
    )
    artifact_max_mb: float = field(
        default=200.0,
        metadata={"help": "Log the .onnx to MLflow as an artifact up to this size (MB); above it only the path "
                          "and sha256 tags are logged (multi-GB uploads would fill the artifact store)."},
    )

    def __post_init__(self) -> None:
        require_choice("export.graph", self.graph, EXPORT_GRAPHS)
        require_choice("export.exporter", self.exporter, EXPORTERS)
        require_choice("export.external_data", self.external_data, EXTERNAL_DATA_MODES)
        require_choice("export.quantize", self.quantize, QUANTIZE_MODES)
        if self.quantize != "int4":
            for name in INT4_KEYS:
                default = type(self).__dataclass_fields__[name].default
                require(getattr(self, name) == default, f"export.{name}", getattr(self, name),
                        f"only applies with export.quantize=int4 (got export.quantize={self.quantize}); "
                        "drop it or set export.quantize=int4")
        block = self.int4_block_size
        require(block >= 16 and block & (block - 1) == 0, "export.int4_block_size", block,
                "must be a power of 2, at least 16 (e.g. 32, 64, 128)")
        require_choice("export.int4_accuracy_level", self.int4_accuracy_level, INT4_ACCURACY_LEVELS)
        require_choice("export.cache_layout", self.cache_layout, CACHE_LAYOUTS)
        require(self.cache_layout == "auto" or self.graph == "kv_cache", "export.cache_layout", self.cache_layout,
                "applies only to export.graph=kv_cache")
        require(7 <= self.opset <= 23, "export.opset", self.opset, "must be an ONNX opset between 7 and 23")
        require(self.parity_tol is None or self.parity_tol > 0, "export.parity_tol", self.parity_tol, "must be > 0")
        require(self.parity_batch_size > 0, "export.parity_batch_size", self.parity_batch_size, "must be > 0")
        require(self.parity_seq_len > 0, "export.parity_seq_len", self.parity_seq_len, "must be > 0")
        require(not self.layer_outputs or self.graph == "kv_cache", "export.layer_outputs", self.layer_outputs,
                f"is a variant of the kv_cache graph; export.graph={self.graph} has no decoder-layer outputs")
        require(self.artifact_max_mb >= 0, "export.artifact_max_mb", self.artifact_max_mb, "must be ≥ 0")
        require(self.kv_capacity >= 2, "export.kv_capacity", self.kv_capacity,
                "must be ≥ 2 (a prompt token and a generated one)")
        chunks = self.prefill_chunks
        require(len(chunks) > 0 and all(c > 0 for c in chunks) and len(set(chunks)) == len(chunks),
                "export.prefill_chunks", chunks, "must list distinct chunk sizes > 0, e.g. [16, 128]")
        require(max(chunks) <= self.kv_capacity, "export.prefill_chunks", chunks,
                f"a chunk cannot exceed export.kv_capacity={self.kv_capacity}")
