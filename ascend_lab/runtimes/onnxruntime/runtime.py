"""The onnxruntime runtime: an exported ONNX graph in an ``InferenceSession``.

:func:`open_session` is the one place sessions are made — the CLI, the generation engine, the export's
parity check and the benchmark scripts all call it — with the settings that suit decoding as the
documented defaults (:class:`~ascend_lab.runtimes.onnxruntime.config.OnnxRuntimeConfig`): intra-op threads = physical cores (an extra thread per SMT sibling
only competes for the same core's load ports, and decode is memory-bound), one inter-op thread (the
graph is a chain), sequential execution, and worker threads that spin between kernels or sleep
(``runtime.allow_spinning``).

Execution providers follow the resolved device (CANN on an Ascend NPU, CUDA on a GPU, always the CPU
last as fallback), keeping only those this onnxruntime build has, with a logged note for each one it
lacks (the CANN and CUDA providers ship in separate onnxruntime builds).

Generation over the kv_cache graph (:class:`OrtCacheBackend`) binds the cache with I/O binding: on the
CPU provider it is an ``OrtValue`` over a numpy array, so the session reads it in place and the new
tokens' slots are written into it in place — nothing is copied per step but those slots. The
transformer-optimised graph (:mod:`ascend_lab.export.fused_attention`) writes them itself: each layer's cache is
bound as its input and its output at once.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.errors import AscendLabError
from ascend_lab.runtimes.base import Runtime, TensorSpec
from ascend_lab.runtimes.engine import Traffic, no_layer_outputs
from ascend_lab.runtimes.onnxruntime.config import OnnxRuntimeConfig

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


def physical_cores() -> int:
    """Physical cores of this host (what ``runtime.intra_op_threads=0`` means)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def session_options(intra_op_threads: int = 0, inter_op_threads: int = 0, graph_optimization: str = "all",
                    allow_spinning: bool = True):
    """``SessionOptions`` for decoding; 0 threads means: physical cores (intra), 1 (inter)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or physical_cores()
    options.inter_op_num_threads = inter_op_threads or 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                               GRAPH_OPTIMIZATION_LEVELS[graph_optimization])
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    options.log_severity_level = 3  # errors only: the CPU provider's notes about unused initializers are noise
    return options


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


def open_session(onnx_path: str | Path, device_kind: str = "cpu", device_index: int = 0, intra_op_threads: int = 0,
                 inter_op_threads: int = 0, graph_optimization: str = "all", notes: list[str] | None = None,
                 profile_prefix: str | Path | None = None, allow_spinning: bool = True):
    """An ``InferenceSession`` with :func:`session_options` and the device's provider (CPU last).

    ``profile_prefix``: switch on onnxruntime's built-in profiler (``SessionOptions.enable_profiling``); its JSON
    trace is written as ``<profile_prefix>_<date>.json`` when ``end_profiling()`` is called (profile=on).
    A file onnxruntime cannot load is an :class:`AscendLabError` saying what to do.
    """
    import onnxruntime as ort

    providers, lacking = choose_providers(device_kind, device_index, ort.get_available_providers())
    for note in lacking:
        log.warning("onnxruntime: %s", note)
    if notes is not None:
        notes.extend(lacking)
    options = session_options(intra_op_threads, inter_op_threads, graph_optimization, allow_spinning)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime's own classes (InvalidProtobuf, NoSuchFile, Fail, ...)
        if type(exc).__module__.split(".")[0] != "onnxruntime":
            raise
        raise AscendLabError(
            f"onnxruntime cannot load {onnx_path}: {_first_line(exc)}. The file is missing, truncated or not an "
            "ONNX model: export it again (task=export; a damaged export cache entry is exported again "
            "automatically) or point at an intact .onnx (with its .onnx.data beside it).") from None


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, onnx_path: str | Path, contract: gc.GraphContract, device_kind: str = "cpu",
                 device_index: int = 0, intra_op_threads: int = 0, inter_op_threads: int = 0,
                 graph_optimization: str = "all", profile_prefix: str | Path | None = None,
                 allow_spinning: bool = True) -> None:
        self.contract = contract
        self.notes: list[str] = []
        # What a profiling session of the same graph is opened with (profiled()).
        self._opened_with = dict(onnx_path=onnx_path, device_kind=device_kind, device_index=device_index,
                                 intra_op_threads=intra_op_threads, inter_op_threads=inter_op_threads,
                                 graph_optimization=graph_optimization, allow_spinning=allow_spinning)
        self._session = open_session(onnx_path, device_kind, device_index, intra_op_threads, inter_op_threads,
                                     graph_optimization, self.notes, profile_prefix=profile_prefix,
                                     allow_spinning=allow_spinning)
        self.providers: list[str] = self._session.get_providers()
        self.threads = self._session.get_session_options().intra_op_num_threads
        self._inputs = [_spec(i) for i in self._session.get_inputs()]
        self._outputs = [_spec(o) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]

    @classmethod
    def load(cls, config: OnnxRuntimeConfig, graph, device) -> "OnnxRuntime":
        """An ``InferenceSession`` of ``graph`` (an ``ascend_lab.graph_contract.GraphFile``: the export, or its
        transformer-optimised form) with ``config``'s threads and optimisation level, on ``device``'s provider."""
        return cls(graph.path, graph.contract, device.kind, device.index, config.intra_op_threads,
                   config.inter_op_threads, config.graph_optimization, allow_spinning=config.allow_spinning)

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    @property
    def session(self):
        if self._session is None:
            raise RuntimeError("OnnxRuntime used after close()")
        return self._session

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session
        try:
            results = session.run(self._output_names, {spec.name: feeds[spec.name] for spec in self._inputs})
        except Exception as exc:
            # onnxruntime's messages about wrong feeds name a graph node, or nothing (a missing name is a
            # KeyError): say which input is wrong and how; a failure the feeds do not explain stays as it is.
            problem = feed_problem(self._inputs, feeds)
            if problem is None:
                raise
            raise FeedError(f"onnxruntime: {problem}") from exc
        return dict(zip(self._output_names, results))

    def cache_backend(self) -> OrtCacheBackend:
        return OrtCacheBackend(self.session, self.contract)

    @contextmanager
    def profiled(self, out_dir, settings) -> Iterator:
        """onnxruntime's built-in profiler is a session option, so the profiled pass runs on a second session of
        the same graph and settings (from :func:`open_session`), with phases on the host's wall clock; the trace
        is the JSON ``end_profiling()`` writes. The profiling session is closed however the block ends."""
        from ascend_lab.profiling.events import ONNXRUNTIME, TraceFile, WallClockSession
        from ascend_lab.runtimes.onnxruntime import trace

        profiling = OnnxRuntime(contract=self.contract, **self._opened_with, profile_prefix=Path(out_dir) / "onnxruntime")
        session = WallClockSession(profiling)
        try:
            yield session
        finally:
            origin = profiling.session.get_profiling_start_time_ns()
            path = Path(profiling.session.end_profiling())
            profiling.close()
        session.traces.append(TraceFile(path, ONNXRUNTIME, marks=tuple(session.clock.marks), origin_ns=origin,
                                        parser=trace.parse))

    def close(self) -> None:
        self._session = None


class OrtCacheBackend:
    """The kv_cache graph on an ``InferenceSession`` with I/O binding (see the module docstring).

    The exported graph takes the contract's one cache tensor [capacity, batch, 2·layers, kv_heads, dim] and
    outputs the new tokens' slots, which the backend writes into it after each execution. The fused derived graph
    (:mod:`ascend_lab.export.fused_attention`, ``in_place``) takes each layer's keys and values
    [batch, kv_heads, capacity, dim] as an input and an output bound to the same memory, one array
    [2·layers, batch, kv_heads, capacity, dim] here, and writes the new slots itself; :meth:`read_slots` and
    :meth:`write_slots` (the serve scheduler's row moves) convert to and from the contract's slot-major layout,
    and so does ``cache`` (a copy then) for readers that want the whole of it."""

    fixed_capacity = None
    seq_gears = None

    def __init__(self, session, contract: gc.GraphContract) -> None:
        self.session, self.contract = session, contract
        self.traffic = Traffic()
        self.batch = self.capacity = 0
        self.in_place = gc.has_layer_cache([i.name for i in session.get_inputs()])
        slots = session.get_modelmeta().custom_metadata_map.get(gc.MAX_CACHE_SLOTS_KEY)
        self.max_capacity = int(slots) if slots else None
        # What execute() reads back: the present slots unless the graph writes them itself.
        self._outputs = [n for n in contract.output_names() if not (self.in_place and n == gc.PRESENT_KEY_VALUES)]
        self._binding = session.io_binding()
        self._pads: np.ndarray | None = None
        self._fixed: dict[str, np.ndarray] = {}  # the fused graph's outputs, bound by allocate()
        self._logits: np.ndarray | None = None
        self._layer_hidden: np.ndarray | None = None
        on_cpu = session.get_providers()[0] == "CPUExecutionProvider"
        self.notes = [] if on_cpu else [
            f"{session.get_providers()[0]}: the cache is bound from host memory, so onnxruntime copies it to the "
            "device every step (use runtime=torch for the GPU path)"]

    def allocate(self, batch: int, capacity: int) -> None:
        import onnxruntime as ort

        if self.max_capacity is not None and capacity > self.max_capacity:
            raise AscendLabError(
                f"onnxruntime: a cache of {capacity} slots is more than the fused graph's rotary tables cover "
                f"({self.max_capacity} positions, from the model's max_position_embeddings); lower export.kv_capacity "
                f"to at most {self.max_capacity}, or load the export as it is (runtime.transformer_optimize=false)")
        binding, dtype = self._binding, self.contract.numpy_dtype
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        if self.in_place:
            d = self.contract.dims
            self._layers = np.zeros((2 * d.num_layers, batch, d.num_kv_heads, capacity, d.head_dim), dtype=dtype)
            # One OrtValue per layer's keys or values, bound as input and output: read and written where it lies.
            self._layer_values = [ort.OrtValue.ortvalue_from_numpy(part) for part in self._layers]
            for j, value in enumerate(self._layer_values):
                binding.bind_ortvalue_input(gc.PAST_LAYER_INPUT.format(j), value)
                binding.bind_ortvalue_output(gc.PRESENT_LAYER_OUTPUT.format(j), value)
            # The outputs execute() reads have fixed shapes: bound once to arrays of ours, so a step wraps no
            # outputs (get_outputs() would wrap all 2·layers caches too).
            shapes = {gc.LOGITS: (batch, d.vocab_size), gc.NEXT_TOKEN: (batch,),
                      gc.LAYER_HIDDEN_STATES: (d.num_layers, batch, d.hidden_size)}
            types = {o.name: ORT_TYPES[o.type] for o in self.session.get_outputs()}
            self._fixed = {name: np.empty(shapes[name], dtype=types[name]) for name in self._outputs}
            for name, array in self._fixed.items():
                binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
        else:
            self._cache = np.zeros(self.contract.cache_shape(capacity, batch), dtype=dtype)
            self._cache_value = ort.OrtValue.ortvalue_from_numpy(self._cache)  # shares the numpy memory
            binding.bind_ortvalue_input(gc.PAST_KEY_VALUES, self._cache_value)
            # The present slots vary with the tokens fed: bound per execution, after the cache, so they are the
            # last of get_outputs().
            for name in self._outputs:
                binding.bind_output(name, "cpu")
        self.batch, self.capacity = batch, capacity

    @property
    def cache(self) -> np.ndarray:
        """The cache in the contract's layout [capacity, batch, 2·layers, kv_heads, dim] (a copy with the fused
        graph's)."""
        return self._cache if not self.in_place else self.read_slots(0, self.capacity)

    def execute(self, input_ids, position_ids: np.ndarray, past_length: int, pad_lengths: np.ndarray | None):
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[:, None]
        if pad_lengths is not None:
            self._pads = np.ascontiguousarray(pad_lengths, dtype=np.int64)
        binding = self._binding
        # The cache stays bound from allocate(); binding a name again replaces its earlier binding.
        binding.bind_cpu_input(gc.INPUT_IDS, ids)
        binding.bind_cpu_input(gc.POSITION_IDS, np.ascontiguousarray(position_ids, dtype=np.int64))
        if self.in_place:
            for name, value in gc.fused_attention_feeds(past_length, ids.shape[1], self._pads,
                                                        self.contract.numpy_dtype).items():
                binding.bind_cpu_input(name, value)
            self.session.run_with_iobinding(binding)
            outputs = self._fixed
        else:
            binding.bind_cpu_input(gc.PAST_LENGTH, np.array([past_length], dtype=np.int64))
            binding.bind_cpu_input(gc.PAD_LENGTHS, self._pads)
            for name in self._outputs:  # fresh buffers: the last execution's stay with whoever read them
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            values = binding.get_outputs()
            outputs = {name: value.numpy()
                       for name, value in zip(self._outputs, values[len(values) - len(self._outputs):])}
            self.write_slots(past_length, outputs[gc.PRESENT_KEY_VALUES])  # [seq, batch, 2·layers, kv_heads, dim]
        self._logits = outputs[gc.LOGITS]
        self._layer_hidden = outputs.get(gc.LAYER_HIDDEN_STATES)
        # A copy: the caller keeps each step's tokens, and the fused graph's next execution writes the same array.
        return outputs[gc.NEXT_TOKEN].astype(np.int64)

    def to_host(self, tokens) -> np.ndarray:
        return np.asarray(tokens, dtype=np.int64)

    def read_slots(self, start: int, stop: int, row: int | None = None) -> np.ndarray:
        """Slots ``[start, stop)`` in the contract's layout [n, batch, 2·layers, kv_heads, dim] (row: [n, 2·layers,
        kv_heads, dim]), a copy."""
        if not self.in_place:
            return (self._cache[start:stop] if row is None else self._cache[start:stop, row]).copy()
        rows = slice(None) if row is None else slice(row, row + 1)
        slots = self._layers[:, rows, :, start:stop].transpose(3, 1, 0, 2, 4)  # [n, batch, 2·layers, kv_heads, dim]
        return np.ascontiguousarray(slots if row is None else slots[:, 0])

    def write_slots(self, start: int, values: np.ndarray, row: int | None = None) -> None:
        """Write ``values`` (the contract's layout, as :meth:`read_slots` gives) at slot ``start``, in place: the
        bound OrtValues share this memory."""
        stop = start + values.shape[0]
        if not self.in_place:
            if row is None:
                self._cache[start:stop] = values
            else:
                self._cache[start:stop, row] = values
            return
        if row is not None:
            values = values[:, None]
        rows = slice(None) if row is None else slice(row, row + 1)
        self._layers[:, rows, :, start:stop] = values.transpose(2, 1, 3, 0, 4)

    def last_logits(self) -> np.ndarray:
        return np.array(self._logits, copy=True)

    def last_layer_hidden(self) -> np.ndarray:
        if self._layer_hidden is None:
            raise no_layer_outputs("onnxruntime")
        return np.array(self._layer_hidden, copy=True)


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
