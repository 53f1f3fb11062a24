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

from ascend_lab.errors import AscendLabError
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
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime's own classes (InvalidProtobuf, NoSuchFile, Fail, ...)
            if type(exc).__module__.split(".")[0] != "onnxruntime":
                raise
            raise AscendLabError(
                f"onnxruntime cannot load {onnx_path}: {_first_line(exc)}. The file is missing, truncated or not an "
                "ONNX model: export it again (task=export; a damaged export cache entry is exported again "
                "automatically) or point at an intact .onnx (with its .onnx.data beside it).") from None
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
        try:
            results = self._session.run(self._output_names, {spec.name: feeds[spec.name] for spec in self._inputs})
        except Exception as exc:
            # onnxruntime's messages about wrong feeds name a graph node, or nothing (a missing name is a
            # KeyError): say which input is wrong and how; a failure the feeds do not explain stays as it is.
            problem = feed_problem(self._inputs, feeds)
            if problem is None:
                raise
            raise FeedError(f"onnxruntime: {problem}") from exc
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        self._session = None


class FeedError(AscendLabError):
    """Feeds that do not match the graph's inputs (names, dtypes, ranks or sizes)."""


def feed_problem(specs: list[TensorSpec], feeds: Mapping[str, np.ndarray]) -> str | None:
    """What is wrong with ``feeds`` for inputs ``specs`` (one sentence), or None when they match."""
    expected = [spec.name for spec in specs]
    missing = [name for name in expected if name not in feeds]
    unknown = [name for name in feeds if name not in expected]
    if missing or unknown:
        return (f"the graph takes inputs {expected}; missing {missing}" + (f", unknown {unknown}" if unknown else ""))
    sizes: dict[str, tuple[str, int]] = {}  # symbolic dim → (input that set it, size)
    for spec in specs:
        array = np.asarray(feeds[spec.name])
        if array.dtype != spec.dtype:
            return (f"input {spec.name!r}: expected dtype {spec.dtype}, got {array.dtype} "
                    f"(cast it, e.g. .astype(np.{spec.dtype}))")
        if array.ndim != len(spec.shape):
            return f"input {spec.name!r}: expected rank {len(spec.shape)} {spec.shape}, got shape {array.shape}"
        for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(want, int) and want >= 0 and want != got:
                return f"input {spec.name!r}: expected size {want} in axis {axis} {spec.shape}, got shape {array.shape}"
            if isinstance(want, str) and want != "?":
                first = sizes.setdefault(want, (spec.name, got))
                if first[1] != got:
                    return (f"inputs {first[0]!r} and {spec.name!r} disagree on dim {want!r}: {first[1]} vs {got} "
                            f"(shapes {np.shape(feeds[first[0]])} and {array.shape})")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else (d or "?") for d in node.shape)
    return TensorSpec(node.name, shape, np.dtype(ORT_TYPES.get(node.type, np.float32)))
