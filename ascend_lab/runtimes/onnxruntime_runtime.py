"""The onnxruntime runtime: an exported ONNX graph in an ``InferenceSession``.

Execution providers follow the resolved device (CANN on an Ascend NPU, CUDA on a GPU, always the
CPU last as fallback), keeping only those this onnxruntime build has, with a logged note for each
one it lacks (the CANN and CUDA providers ship in separate onnxruntime builds).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np

from ascend_lab.runtimes.base import Runtime, TensorSpec

log = logging.getLogger(__name__)

# onnxruntime's type strings → numpy dtypes (the ones an exported LLM graph uses).
ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
GRAPH_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                             "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
DEVICE_PROVIDERS = {"npu": "CANNExecutionProvider", "cuda": "CUDAExecutionProvider"}


def choose_providers(device_kind: str, device_index: int, available: list[str]) -> tuple[list, list[str]]:
    """(providers for the session, notes about wanted providers this build lacks)."""
    providers: list = []
    notes: list[str] = []
    wanted = DEVICE_PROVIDERS.get(device_kind)
    if wanted is not None:
        if wanted in available:
            providers.append((wanted, {"device_id": device_index}))
        else:
            notes.append(f"{wanted} is not in this onnxruntime build (available: {', '.join(available)}); "
                         f"the {device_kind} device is not used by onnxruntime"
                         + ("; install onnxruntime-cann" if device_kind == "npu" else "; install onnxruntime-gpu"))
    providers.append("CPUExecutionProvider")
    return providers, notes


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, device_kind: str = "cpu", device_index: int = 0,
                 intra_op_threads: int = 0, inter_op_threads: int = 0, graph_optimization: str = "all") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   GRAPH_OPTIMIZATION_LEVELS[graph_optimization])
        providers, self.notes = choose_providers(device_kind, device_index, ort.get_available_providers())
        for note in self.notes:
            log.warning("onnxruntime: %s", note)
        self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        self.providers: list[str] = self._session.get_providers()
        self._inputs = [_spec(i) for i in self._session.get_inputs()]
        self._outputs = [_spec(o) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    @property
    def session(self):
        """The ``InferenceSession`` (None once closed), for engines that bind its I/O directly."""
        return self._session

    def engine(self, layout, max_len: int | None = None):
        """The decode engine: I/O binding keeps the KV cache in onnxruntime's memory between steps
        (:class:`~ascend_lab.runtimes.ort_engine.OrtEngine`); numpy feeds for the cache-less graph."""
        if layout.graph == "kv_cache":
            from ascend_lab.runtimes.ort_engine import OrtEngine

            return OrtEngine.from_runtime(self, layout)
        from ascend_lab.bench.generation import FeedsEngine

        return FeedsEngine(self, layout)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise RuntimeError("OnnxRuntime.run() after close()")
        results = self._session.run(self._output_names, {spec.name: feeds[spec.name] for spec in self._inputs})
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        self._session = None


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in node.shape)
    return TensorSpec(node.name, shape, np.dtype(ORT_TYPES.get(node.type, np.float32)))
