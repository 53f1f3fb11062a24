"""The fast onnxruntime decode path: the KV cache stays in onnxruntime's memory between steps.

:class:`OrtEngine` implements the :class:`~ascend_lab.bench.generation.Engine` protocol on an
``onnxruntime.InferenceSession`` with I/O binding: each step's ``present.*`` outputs (OrtValues,
on the session's device) are bound as the next step's ``past_key_values.*`` inputs, so the cache
never goes through numpy (on a GPU it never leaves the device). Only the last position's logits
come to the host, where the greedy argmax is taken; ``input_ids`` and ``attention_mask`` are a few
int64s per row.

:func:`session_options` holds the thread settings that suit decoding: intra-op threads = physical
cores (an extra thread per SMT sibling only competes for the same core's load ports, and decode is
memory-bound), one inter-op thread (the graph is a chain), sequential execution.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ascend_lab.bench.generation import GraphLayout

log = logging.getLogger(__name__)

# Execution provider → onnxruntime's device name for OrtValues and output binding.
PROVIDER_DEVICES = {"CUDAExecutionProvider": "cuda", "CANNExecutionProvider": "cann"}
# onnx TensorProto element types of the cache, for an empty past of the session's own dtype
# (numpy has no bfloat16, so the OrtValue is made from the onnx type number).
ONNX_ELEMENT_TYPES = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(bfloat16)": 16}


def physical_cores() -> int:
    """Physical cores of this host (what ``intra_op_threads=0`` means here)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:  # psutil is a dependency, but the count is not worth failing for
        cores = None
    return cores or os.cpu_count() or 1


def session_options(intra_op_threads: int = 0, inter_op_threads: int = 0, graph_optimization: str = "all"):
    """``SessionOptions`` for decoding; 0 threads means: physical cores (intra), 1 (inter)."""
    import onnxruntime as ort

    from ascend_lab.runtimes.onnxruntime_runtime import GRAPH_OPTIMIZATION_LEVELS

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or physical_cores()
    options.inter_op_num_threads = inter_op_threads or 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               GRAPH_OPTIMIZATION_LEVELS[graph_optimization])
    # Steps come back to back: workers that spin between kernels wake faster than ones that sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    return options


def open_session(onnx_path: str | Path, device_kind: str = "cpu", device_index: int = 0,
                 intra_op_threads: int = 0, inter_op_threads: int = 0, graph_optimization: str = "all"):
    """An ``InferenceSession`` with :func:`session_options` and the device's provider (CPU last)."""
    import onnxruntime as ort

    from ascend_lab.runtimes.onnxruntime_runtime import choose_providers

    providers, notes = choose_providers(device_kind, device_index, ort.get_available_providers())
    for note in notes:
        log.warning("onnxruntime: %s", note)
    options = session_options(intra_op_threads, inter_op_threads, graph_optimization)
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


class OrtEngine:
    """Greedy decoding through ``run_with_iobinding``, the KV cache kept as OrtValues."""

    def __init__(self, session, layout: GraphLayout) -> None:
        layout.require_generative()
        if layout.graph != "kv_cache":
            # The logits graph re-reads the whole sequence each step: there is no cache to keep.
            raise ValueError("OrtEngine decodes the kv_cache graph; use FeedsEngine for export.graph=logits")
        self.session, self.layout = session, layout
        provider = session.get_providers()[0]
        self.device = PROVIDER_DEVICES.get(provider, "cpu")
        self.device_index = _device_id(session, provider)
        inputs = {i.name: i for i in session.get_inputs()}
        missing = [n for n in layout.input_names() if n not in inputs]
        if missing:
            raise ValueError(f"the session's graph lacks the kv_cache inputs {missing[:3]}…")
        self._cache_type = ONNX_ELEMENT_TYPES.get(inputs[layout.past_names()[0]].type, 1)
        self._binding = session.io_binding()
        self._tokens: list[np.ndarray] = []
        self.notes = [f"I/O binding on {self.device}: the KV cache stays in onnxruntime's memory between steps"]

    @classmethod
    def from_runtime(cls, runtime, layout: GraphLayout) -> OrtEngine:
        """The engine over an :class:`~ascend_lab.runtimes.onnxruntime_runtime.OnnxRuntime`'s session."""
        session = getattr(runtime, "session", None) or getattr(runtime, "_session", None)
        if session is None:
            raise ValueError(f"{type(runtime).__name__} has no onnxruntime session (closed?)")
        return cls(session, layout)

    @classmethod
    def open(cls, onnx_path: str | Path, layout: GraphLayout, device_kind: str = "cpu", device_index: int = 0,
             intra_op_threads: int = 0, inter_op_threads: int = 0, graph_optimization: str = "all") -> OrtEngine:
        return cls(open_session(onnx_path, device_kind, device_index, intra_op_threads, inter_op_threads,
                                graph_optimization), layout)

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        import onnxruntime as ort

        batch = input_ids.shape[0]
        self._tokens = []
        self._mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        shape = [batch, self.layout.num_kv_heads, 0, self.layout.head_dim]
        empty = ort.OrtValue.ortvalue_from_shape_and_type(shape, self._cache_type, self.device, self.device_index)
        self._past = [empty] * len(self.layout.past_names())
        self._advance(np.ascontiguousarray(input_ids, dtype=np.int64))

    def step(self) -> None:
        last = self._tokens[-1][:, None]
        self._mask = np.concatenate([self._mask, np.ones_like(last)], axis=1)
        self._advance(last)

    def _advance(self, input_ids: np.ndarray) -> None:
        binding = self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        binding.bind_cpu_input("input_ids", input_ids)
        binding.bind_cpu_input("attention_mask", self._mask)
        for name, value in zip(self.layout.past_names(), self._past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")  # the argmax is taken on the host
        for name in self.layout.present_names():
            binding.bind_output(name, self.device, self.device_index)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self._past = list(outputs[1:])  # present.* become the next step's past: no copy
        # [batch, seq, vocab] on the host: one position per decode step
        self.last_logits = outputs[0].numpy()[:, -1, :]
        self._tokens.append(np.argmax(self.last_logits, axis=-1).astype(np.int64))

    def generated(self) -> np.ndarray:
        return np.stack(self._tokens, axis=1)


def _device_id(session, provider: str) -> int:
    options = session.get_provider_options().get(provider, {})
    try:
        return int(options.get("device_id", 0))
    except (TypeError, ValueError):
        return 0
