"""``runtime=torch``: the model in PyTorch on the resolved device."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.config.runtime import NAME_HELP, RuntimeConfig
from ascend_lab.errors import require, require_choice, require_positive

COMPILE_BACKENDS = ("auto", "inductor", "torchair")


@dataclass
class TorchRuntimeConfig(RuntimeConfig):
    artifact: ClassVar[str] = "model"

    name: str = field(default="torch", metadata=NAME_HELP)
    _target_: str = "ascend_lab.runtimes.torch.runtime.TorchRuntime"
    intra_op_threads: int = field(
        default=0, metadata={"help": "torch.set_num_threads; 0: torch keeps its default."})
    graph_capture: bool = field(
        default=False,
        metadata={"help": "generate: static KV cache with the decode step captured as one graph "
                          "(CUDA graphs / NPU graphs; on the CPU the same static step runs eagerly, with a note)."},
    )
    compile: bool = field(
        default=False,
        metadata={"help": "generate: torch.compile the static-cache decode step (kernel fusion; q/k/v and "
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
        super().__post_init__()
        require_positive("runtime.intra_op_threads", self.intra_op_threads, allow_zero=True)
        require_choice("runtime.compile_backend", self.compile_backend, COMPILE_BACKENDS)
        require(self.compile or self.compile_backend == "auto", "runtime.compile_backend", self.compile_backend,
                "is read only with runtime.compile=true; set both or drop it")
