"""`runtime` group: what executes the model in task=infer / task=bench."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.errors import require_choice, require_positive

RUNTIME_NAMES = ("auto", "torch", "onnxruntime", "acl")
COMPILE_BACKENDS = ("auto", "inductor", "torchair")
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
        default=0,
        metadata={"help": "onnxruntime intra-op threads / torch.set_num_threads; 0: onnxruntime uses one per "
                          "physical core (a second thread per SMT sibling only competes for the same core's load "
                          "ports, and decode is memory-bound), torch keeps its default. onnxruntime sessions also "
                          "run sequentially with spinning workers (runtimes/onnxruntime_runtime.session_options)."})
    inter_op_threads: int = field(
        default=0, metadata={"help": "onnxruntime inter-op threads; 0: 1 (the decoder graph is a chain)."})
    graph_optimization: str = field(
        default="all", metadata={"help": "onnxruntime graph optimisation level: disable, basic, extended, all."},
    )
    transformer_optimize: bool = field(
        default=True,
        metadata={"help": "onnxruntime: load the export after onnxruntime's transformer optimizer (RMSNorms and "
                          "residual adds fused into SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization; "
                          "fewer nodes per step: 11–19 % less time per decode step on Qwen2.5-0.5B shapes), built once "
                          "and cached beside the export. Its fused ops are onnxruntime's own (com.microsoft), so it "
                          "is never what ATC compiles; float32 logits differ from the plain graph's in the last "
                          "bits. false: load the export as it is."},
    )
    huge_pages: bool = field(
        default=True,
        metadata={"help": "torch and onnxruntime on the CPU: move the weights just loaded into 2 MiB transparent "
                          "huge pages (madvise MADV_HUGEPAGE + MADV_COLLAPSE, Linux ≥ 6.1): a decode step streams every "
                          "weight, and over 4 KiB pages each 4 KiB read costs a TLB miss (1–14 % less time per "
                          "decode step on Qwen2.5-0.5B shapes, faster in 7 of 7 alternating runs). Costs a copy at load (a few seconds per GB, in "
                          "load_seconds; huge_page_gb and huge_page_seconds say what was moved). Where the host "
                          "cannot (not Linux, older kernel, THP off) the load goes on in 4 KiB pages with a note. "
                          "false: leave the pages as the allocator made them."},
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

    compile_backend: str = field(
        default="auto",
        metadata={"help": "torch.compile backend for runtime.compile: auto (torchair on an NPU, whose inductor "
                          "support is missing or very slow; inductor elsewhere), inductor, or torchair "
                          "(torchair.get_npu_backend(), needs the torchair package on an Ascend host)."},
    )

    def __post_init__(self) -> None:
        require_choice("runtime.name", self.name, RUNTIME_NAMES)
        require_choice("runtime.graph_optimization", self.graph_optimization, ORT_GRAPH_OPTIMIZATIONS)
        require_choice("runtime.compile_backend", self.compile_backend, COMPILE_BACKENDS)
        require_positive("runtime.intra_op_threads", self.intra_op_threads, allow_zero=True)
        require_positive("runtime.inter_op_threads", self.inter_op_threads, allow_zero=True)


# Which RuntimeConfig fields each runtime reads (the help texts above say the same in words); `name` picks the
# runtime and is read by all. acl runs a compiled .om whose threads and graph ATC fixed at compile time.
# A field added to RuntimeConfig must be added here too (tests/test_config.py checks that every field is).
RUNTIME_FIELDS: dict[str, tuple[str, ...]] = {
    "torch": ("intra_op_threads", "huge_pages", "graph_capture", "compile", "compile_backend"),
    "onnxruntime": ("intra_op_threads", "inter_op_threads", "graph_optimization", "transformer_optimize", "huge_pages"),
    "acl": (),
}


def ignored_runtime_keys(cfg: RuntimeConfig, runtime: str) -> dict[str, str]:
    """The fields of ``cfg`` set away from their default that ``runtime`` does not read, each with the
    warning to give: ``{"runtime.graph_capture": "runtime.graph_capture=True has no effect on ..."}``.

    ``runtime`` is the resolved name (torch, onnxruntime, acl), known only once runtime=auto has chosen;
    so this is called then, not in __post_init__. Without the warning such a key is dropped silently and
    a user compares two runs that differ in nothing. A key the runtime reads only with another one set
    (compile_backend without compile) is named the same way.
    """
    if runtime not in RUNTIME_FIELDS:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIME_FIELDS)} (resolved), not {runtime!r}")
    read = RUNTIME_FIELDS[runtime]
    ignored = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "name" or value == _default(f):
            continue
        setting = f"runtime.{f.name}={_shown(value)}"
        if f.name not in read:
            users = " or ".join(f"runtime={name}" for name, fields in RUNTIME_FIELDS.items() if f.name in fields)
            ignored[f"runtime.{f.name}"] = (f"{setting} has no effect on runtime={runtime}"
                                            + (f" (only {users} reads it); drop it or choose {users}" if users
                                               else "; drop it"))
        elif f.name == "compile_backend" and not cfg.compile:
            ignored[f"runtime.{f.name}"] = (f"{setting} has no effect without runtime.compile=true; set both "
                                            "or drop it")
    return ignored


def _shown(value: object) -> str:
    """A value as it is written on the command line (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _default(f: dataclasses.Field) -> object:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
