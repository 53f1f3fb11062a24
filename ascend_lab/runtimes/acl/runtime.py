"""pyACL runtime: runs an offline ``.om`` model on an Ascend NPU through CANN's ``import acl``.

Written against the documented pyACL Python API (CANN "pyACL API reference", aclpythondevg pages 0007, 0124, 0147, 0201):
``(value, ret)`` tuples where the C API has an out-parameter, bare values otherwise; every ``ret`` is
checked and turned into :class:`AclError` naming the call and the code.

Public surface::

    with AclRuntime("model.om", device_id=0) as rt:      # a ascend_lab.runtimes.base.Runtime
        rt.inputs, rt.outputs                           # TensorSpec(name, shape (-1 dynamic), numpy dtype)
        rt.dynamic_mode                                 # "static" | "dynamic_batch_size" | "dynamic_dims"
        rt.gears                                        # None | [batch sizes] | [{input: shape}, ...]
        out = rt.run({"input_ids": ids, "attention_mask": mask})   # {output name: np.ndarray}
        rt.timings   # {"h2d_ms": [...], "npu_compute_ms": [...], "d2h_ms": [...]}, one entry per execution
        rt.traffic   # bytes copied host→device, device→host, device→device, and acl.* calls made

Timings follow ais_bench: ``npu_compute_ms`` is ``acl.mdl.execute`` alone (synchronous, host clock);
``h2d_ms`` the input copies, ``d2h_ms`` the output copies.

Generation (:class:`AclCacheBackend`) keeps the kv_cache graph's cache in the model's own input buffer on
the device for the whole generation: per execution it copies the new tokens' ids and positions (and
the slot count) host→device, runs, copies ``present_key_values`` device→device into the new slots
(one ``acl.rt.memcpy``: the cache is slot-major, see :mod:`ascend_lab.graph_contract`) and brings back
only the next token ids. The traffic per token is therefore the same at any context length.

Policies:
  * Output names: for a model built from ONNX, ``acl.mdl.get_output_name_by_index`` returns
    ``op_name:edge_index:output_name`` (aclpythondevg get_output_name_by_index; open-mmlab/mmdeploy
    ``backend/ascend/wrapper.py`` strips it with ``split(':')[-1]``): :func:`graph_output_names` is the one
    place that normalises it. Input names are the graph's own.
  * Feeds are checked against the model description (names, dtype, dims, gears) before anything is
    copied or executed; a mismatch raises :class:`AclInputError` naming the input, expected and got.
    Dtypes are never cast silently.
  * Dynamic batch (``atc --dynamic_batch_size``): a batch that is not a gear is padded up to the next
    larger gear by repeating its last sample, and every output whose first dimension is that gear is
    sliced back to the batch. A batch above the largest gear raises :class:`AclInputError` naming the gears.
  * Dynamic dims (``atc --dynamic_dims``): the feed shapes must equal one compiled gear exactly
    (padding a sequence would change the result); otherwise :class:`AclInputError` lists the gears.
  * Host memory: ``acl.util.bytes_to_ptr`` / ``ptr_to_bytes`` (documented from CANN 6.0.1); on older
    CANN, ``numpy_to_ptr`` into numpy arrays, as Ascend/samples ``python/common/acllite`` falls back.
  * ``acl.init`` runs once per process and is reference counted over its users
    (:func:`~ascend_lab.runtimes.acl.pyacl.acquire_acl`, with the constants, errors and host-memory bridge this
    module shares with the roofline and the profiler in :mod:`ascend_lab.runtimes.acl.pyacl`): the last
    ``close()`` calls ``acl.finalize``. When pyACL was already initialised by someone else in this
    process (``acl.init`` returns 100002, e.g. torch_npu), that owner finalizes it, not this runtime.
  * Every handle is released in ``close()`` (idempotent), also when construction fails midway:
    data buffers, device/host memory, datasets, description, model, context, device, finalize.
  * One model is not run from two threads at once (a lock, as the pyACL docs require).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from ascend_lab.cann import npu_smi
from ascend_lab import graph_contract as gc
from ascend_lab.errors import AscendLabError, ConfigError, ToolchainError
from ascend_lab.graph_contract import GraphContract
from ascend_lab.runtimes.acl.config import AclRuntimeConfig
from ascend_lab.runtimes.base import Runtime, TensorSpec
from ascend_lab.runtimes.engine import Traffic, no_layer_outputs
from ascend_lab.runtimes.acl.pyacl import (ACL_MEM_MALLOC_HUGE_FIRST, ACL_MEMCPY_DEVICE_TO_DEVICE,
                                       ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE, ACL_SUCCESS,
                                       DYNAMIC_TENSOR_NAME, AclError, AclInputError, HostBridge, acquire_acl,
                                       graph_output_names, import_acl, numpy_dtype, release_acl)

log = logging.getLogger(__name__)

TIMING_KEYS = ("h2d_ms", "npu_compute_ms", "d2h_ms")

# ------------------------------------------------------------------ the runtime

@dataclass
class _Tensor:
    name: str
    dims: list[int]  # -1 where dynamic
    dtype: np.dtype | None  # None for the mbatch input
    size: int  # bytes of the device buffer (largest gear for dynamic models)
    device_ptr: int = 0
    host_ptr: int = 0  # outputs only: the malloc_host staging buffer (modern CANN)
    cur_dims: list[int] | None = None  # outputs: dims of the last execution


def _shape_text(dims) -> str:
    return "(" + ", ".join("?" if d == -1 else str(d) for d in dims) + ")"


class AclRuntime(Runtime):
    """An ``.om`` loaded on one device; see the module docstring for the contract."""

    name = "acl"

    def __init__(self, om_path: str | Path, device_id: int = 0, contract: GraphContract | None = None) -> None:
        self.om_path = Path(om_path)
        self.device_id = int(device_id)
        self.contract = contract
        self.timings: dict[str, list[float]] = {key: [] for key in TIMING_KEYS}
        self.traffic = Traffic()
        self.dynamic_mode = "static"
        self.gears: list | None = None
        self._lock = threading.RLock()
        self._closed = False
        self._acl = None
        self._host = None
        self._acl_acquired = False
        self._device_set = False
        self._context = None
        self._model_id = None
        self._desc = None
        self._in_dataset = None
        self._out_dataset = None
        self._data_buffers: list[int] = []
        self._device_ptrs: list[int] = []
        self._host_ptrs: list[int] = []
        self._inputs: list[_Tensor] = []
        self._outputs: list[_Tensor] = []
        self._mbatch_index: int | None = None
        self._current_gear: Any = None
        self._bound_depth = 0
        if not self.om_path.is_file():
            raise AscendLabError(f"runtime=acl: model file {self.om_path} does not exist; compile one with "
                                 f"task=compile (atc) or point the run at an existing .om")
        self._acl = import_acl()
        self._host = HostBridge(self._acl)
        try:
            self._open()
        except BaseException:
            problems = self._release()
            if problems:
                log.warning("runtime=acl: while cleaning up after a failed start: %s", "; ".join(problems))
            raise

    # -------------------------------------------------------------- Runtime interface

    @classmethod
    def load(cls, config: AclRuntimeConfig, graph, device) -> "AclRuntime":
        """The compiled ``graph`` (an ``ascend_lab.graph_contract.GraphFile`` naming the ``.om``) on NPU
        ``device.index``; ``config`` has no keys of its own (ATC fixed the rest)."""
        return cls(graph.path, device_id=device.index, contract=graph.contract)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, tuple(t.dims), t.dtype) for t in self._graph_inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(t.name, tuple(t.dims), t.dtype) for t in self._outputs]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        with self.bound():
            arrays, batch, gear = self._prepare(feeds)
            start = time.perf_counter()
            for tensor, array in zip(self._graph_inputs, arrays):
                self._upload(tensor, array)
            self.timings["h2d_ms"].append((time.perf_counter() - start) * 1e3)
            self._select_gear(gear)
            self._execute()
            start = time.perf_counter()
            results = {}
            for tensor in self._outputs:
                array = self._download(tensor)
                if batch is not None and gear != batch and array.ndim and array.shape[0] == gear:
                    array = array[:batch]
                results[tensor.name] = array
            self.timings["d2h_ms"].append((time.perf_counter() - start) * 1e3)
            return results

    def cache_backend(self) -> AclCacheBackend:
        if self.contract is None or self.contract.graph != "kv_cache":
            raise AscendLabError(f"runtime=acl: {self.om_path.name} is not a compiled kv_cache graph; generation "
                                 "needs export.graph=kv_cache (compiled with atc.dynamic_mode=auto)")
        return AclCacheBackend(self)

    @contextmanager
    def profiled(self, out_dir, settings) -> Iterator:
        """The pyACL profiling API around the pass's executions, one profiling session per phase
        (:mod:`ascend_lab.runtimes.acl.profiler`); the pass runs on this runtime."""
        from ascend_lab.runtimes.acl.profiler import AclProfiling

        self._require_open()
        yield AclProfiling(self, Path(out_dir), settings)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # never hide the error that ended the block behind a release problem
            self.close()
        except AscendLabError as release_error:
            log.warning("%s", release_error)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            problems = self._release()
        if problems:
            raise ToolchainError(f"runtime=acl: releasing {self.om_path.name} failed: " + "; ".join(problems))

    # -------------------------------------------------------------- device-resident I/O (generation)

    @contextmanager
    def bound(self) -> Iterator[None]:
        """Hold the model (lock) with its context current, for a series of the calls below: the context is
        set once for the series, not once per call."""
        with self._lock:
            self._require_open()
            if self._bound_depth == 0:
                self._set_context()
            self._bound_depth += 1
            try:
                yield
            finally:
                self._bound_depth -= 1

    def tensor(self, name: str) -> _Tensor:
        for tensor in self._graph_inputs + self._outputs:
            if tensor.name == name:
                return tensor
        raise AscendLabError(f"runtime=acl: {self.om_path.name} has no input or output {name!r} (inputs "
                             f"{[t.name for t in self._graph_inputs]}, outputs {[t.name for t in self._outputs]})")

    def write_input(self, name: str, array: np.ndarray) -> None:
        """Copy ``array`` host→device into input ``name``'s buffer (dtype and size checked)."""
        with self.bound():
            tensor = self.tensor(name)
            array = np.asarray(array)
            if array.dtype != tensor.dtype:
                raise self._mismatch(f"input {name!r}", f"expected dtype {tensor.dtype}, got {array.dtype}")
            if array.nbytes > tensor.size:
                raise self._mismatch(f"input {name!r}", f"{array.nbytes} bytes exceed its {tensor.size}-byte buffer")
            self._upload(tensor, array)

    def zero_input(self, name: str) -> None:
        """Fill input ``name``'s device buffer with zeros (``acl.rt.memset``)."""
        with self.bound():
            tensor = self.tensor(name)
            self._call("acl.rt.memset", self._acl.rt.memset, tensor.device_ptr, tensor.size, 0, tensor.size)

    def execute(self, shapes: Mapping[str, tuple[int, ...]] | None = None) -> float:
        """Run once on what the input buffers hold; ``shapes`` (input → shape) picks the gear of a dynamic
        model. Returns the ``acl.mdl.execute`` milliseconds."""
        with self.bound():
            if self.dynamic_mode == "dynamic_dims":
                full = [int(d) for t in self._graph_inputs for d in shapes[t.name]]
                wanted = {t.name: tuple(shapes[t.name]) for t in self._graph_inputs}
                if self.gears is not None and wanted not in self.gears:
                    raise self._mismatch("the inputs", f"shapes {dict(shapes)} are not a compiled gear")
                self._select_gear(full)
            elif self.dynamic_mode == "dynamic_batch_size":
                self._select_gear(int(shapes[self._graph_inputs[0].name][0]))
            return self._execute()

    def read_output(self, name: str, dims: tuple[int, ...] | None = None) -> np.ndarray:
        """Output ``name`` of the last execution, copied device→host. ``dims``: its shape when the caller
        knows it (saves the ``get_cur_output_dims`` call a dynamic model otherwise needs)."""
        with self.bound():
            tensor = self.tensor(name)
            if dims is not None:
                tensor.cur_dims = list(dims)
            return self._download(tensor)

    def copy_output_to_input(self, output: str, input_name: str, offset: int,
                             dims: tuple[int, ...] | None = None) -> int:
        """Copy output ``output`` of the last execution device→device into input ``input_name``'s buffer at
        byte ``offset`` (one ``acl.rt.memcpy``); returns the bytes copied. ``dims`` as for read_output."""
        with self.bound():
            src, dst = self.tensor(output), self.tensor(input_name)
            if dims is not None:
                src.cur_dims = list(dims)
            count = self._current_bytes(src)
            if offset < 0 or offset + count > dst.size:
                raise AclInputError(f"runtime=acl: {count} bytes of {output!r} at offset {offset} do not fit "
                                    f"input {input_name!r}'s {dst.size}-byte buffer")
            self._call("acl.rt.memcpy (device to device)", self._acl.rt.memcpy, dst.device_ptr + offset,
                       dst.size - offset, src.device_ptr, count, ACL_MEMCPY_DEVICE_TO_DEVICE, d2d=count)
            return count

    # -------------------------------------------------------------- calls and checks

    def _call(self, call: str, fn, *args, h2d: int = 0, d2h: int = 0, d2d: int = 0, hint: str = "") -> None:
        """One acl call that returns a bare ret: counted, checked."""
        self.traffic.count(call, h2d=h2d, d2h=d2h, d2d=d2d)
        self._check(call, fn(*args), hint)

    @staticmethod
    def _check(call: str, ret: int, hint: str = "") -> None:
        if ret != ACL_SUCCESS:
            raise AclError(call, ret, hint)

    def _value(self, call: str, result: tuple, hint: str = ""):
        value, ret = result
        self._check(call, ret, hint)
        return value

    @staticmethod
    def _handle(call: str, handle):
        if not handle:  # 0 / None: the documented failure of calls that return a handle directly
            raise AclError(call, None)
        return handle

    def _require_open(self) -> None:
        if self._closed:
            raise AscendLabError(f"runtime=acl: {self.om_path.name} was already closed")

    def _set_context(self) -> None:
        # Load, execute and unload must run in the model's context; another runtime may have made its own current.
        self._call("acl.rt.set_context", self._acl.rt.set_context, self._context)

    # -------------------------------------------------------------- construction

    def _open(self) -> None:
        acl = self._acl
        acquire_acl(acl)
        self._acl_acquired = True
        self._check("acl.rt.set_device", acl.rt.set_device(self.device_id),
                    f"device_id={self.device_id}: is it listed by `npu-smi info` and visible "
                    f"(ASCEND_RT_VISIBLE_DEVICES)?")
        self._device_set = True
        self._context = self._value("acl.rt.create_context", acl.rt.create_context(self.device_id))
        model_id, ret = acl.mdl.load_from_file(str(self.om_path))
        if ret != ACL_SUCCESS:
            raise AclError("acl.mdl.load_from_file", ret, self._load_hint())  # the hint asks npu-smi: only now
        self._model_id = model_id
        self._desc = self._handle("acl.mdl.create_desc", acl.mdl.create_desc())
        self._check("acl.mdl.get_desc", acl.mdl.get_desc(self._desc, self._model_id))
        self._describe()
        self._allocate()

    def _load_hint(self) -> str:
        chip = npu_smi.detected_soc_version()[0]
        here = f"this host's chip is {chip}" if chip else "see the Name column of `npu-smi info`"
        return (f"Could not load {self.om_path}. Either the file is corrupt or truncated (delete it: the next "
                f"task=compile or task=bench compiles it again), it was built by another CANN version, or it was "
                f"compiled for another chip: atc.soc_version must be the `npu-smi info` Name prefixed with Ascend "
                f"({here}).")

    def _describe(self) -> None:
        acl, desc = self._acl, self._desc
        num_inputs = acl.mdl.get_num_inputs(desc)
        num_outputs = acl.mdl.get_num_outputs(desc)
        if not num_inputs or not num_outputs:
            raise AclError("acl.mdl.get_num_inputs/get_num_outputs", None,
                           f"{self.om_path} describes {num_inputs} inputs and {num_outputs} outputs")
        names = [acl.mdl.get_input_name_by_index(desc, i) for i in range(num_inputs)]
        if DYNAMIC_TENSOR_NAME in names:
            self._mbatch_index = self._value("acl.mdl.get_input_index_by_name",
                                             acl.mdl.get_input_index_by_name(desc, DYNAMIC_TENSOR_NAME))
        for i, name in enumerate(names):
            dims = self._dims("acl.mdl.get_input_dims", acl.mdl.get_input_dims(desc, i))
            size = acl.mdl.get_input_size_by_index(desc, i)
            dtype = None if i == self._mbatch_index else numpy_dtype(acl.mdl.get_input_data_type(desc, i),
                                                                     f"input {name!r}")
            self._inputs.append(_Tensor(name, dims, dtype, size))
        expected = self.contract.output_names() if self.contract is not None else None
        raw = [acl.mdl.get_output_name_by_index(desc, i) for i in range(num_outputs)]
        for i, name in enumerate(graph_output_names(raw, expected, self.om_path.name)):
            dims = self._dims("acl.mdl.get_output_dims", acl.mdl.get_output_dims(desc, i))
            dtype = numpy_dtype(acl.mdl.get_output_data_type(desc, i), f"output {name!r}")
            self._outputs.append(_Tensor(name, dims, dtype, acl.mdl.get_output_size_by_index(desc, i)))
        if self._mbatch_index is not None:
            self._describe_gears()
        unsized = [t.name for t in self._inputs + self._outputs if t.size <= 0]
        if unsized or (self._mbatch_index is None and any(-1 in t.dims for t in self._inputs)):
            raise ToolchainError(
                f"runtime=acl: {self.om_path.name} has inputs or outputs without a fixed size "
                f"({unsized or 'dynamic'}): shape ranges (atc.dynamic_mode=shape_range) are not supported by "
                f"runtime=acl; compile with atc.dynamic_mode=static, dynamic_batch_size or dynamic_dims")

    def _dims(self, call: str, result: tuple) -> list[int]:
        info = self._value(call, result)
        return [int(d) for d in list(info["dims"])[: info.get("dimCount", len(info["dims"]))]]

    def _describe_gears(self) -> None:
        acl, desc = self._acl, self._desc
        batch = self._value("acl.mdl.get_dynamic_batch", acl.mdl.get_dynamic_batch(desc))
        if batch.get("batchCount", 0) > 0:
            self.dynamic_mode = "dynamic_batch_size"
            self.gears = sorted(int(b) for b in batch["batch"][: batch["batchCount"]])
            return
        count = self._value("acl.mdl.get_input_dynamic_gear_count",
                            acl.mdl.get_input_dynamic_gear_count(desc, -1))
        if not count:
            raise ToolchainError(
                f"runtime=acl: {self.om_path.name} has the {DYNAMIC_TENSOR_NAME} input but neither batch nor dims "
                f"gears (dynamic image size?); runtime=acl supports atc.dynamic_mode=dynamic_batch_size and "
                f"dynamic_dims")
        self.dynamic_mode = "dynamic_dims"
        gears = self._value("acl.mdl.get_input_dynamic_dims", acl.mdl.get_input_dynamic_dims(desc, -1, count))
        ranks = [len(t.dims) for t in self._graph_inputs]
        parsed = []
        for gear in gears:
            full = [int(d) for d in list(gear["dims"])[: gear.get("dimCount", len(gear["dims"]))]]
            if len(full) != sum(ranks):
                # The docs describe this list loosely; without a parse the set call still validates the gear.
                log.warning("runtime=acl: unexpected get_input_dynamic_dims entry %s; gears not pre-checked", gear)
                self.gears = None
                return
            shapes, start = {}, 0
            for t, rank in zip(self._graph_inputs, ranks):
                shapes[t.name] = tuple(full[start:start + rank])
                start += rank
            parsed.append(shapes)
        self.gears = parsed

    def _allocate(self) -> None:
        acl = self._acl
        self._in_dataset = self._handle("acl.mdl.create_dataset", acl.mdl.create_dataset())
        for tensor in self._inputs:  # the mbatch input included: allocated and added, never written
            tensor.device_ptr = self._bind(self._in_dataset, tensor.size)
        self._out_dataset = self._handle("acl.mdl.create_dataset", acl.mdl.create_dataset())
        for tensor in self._outputs:
            tensor.device_ptr = self._bind(self._out_dataset, tensor.size)
            if self._host.modern:  # the staging buffer ptr_to_bytes reads from
                tensor.host_ptr = self._value("acl.rt.malloc_host", acl.rt.malloc_host(tensor.size))
                self._host_ptrs.append(tensor.host_ptr)

    def _bind(self, dataset: int, size: int) -> int:
        acl = self._acl
        ptr = self._value("acl.rt.malloc", acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST))
        self._device_ptrs.append(ptr)
        buffer = self._handle("acl.create_data_buffer", acl.create_data_buffer(ptr, size))
        self._data_buffers.append(buffer)
        _, ret = acl.mdl.add_dataset_buffer(dataset, buffer)
        self._check("acl.mdl.add_dataset_buffer", ret)
        return ptr

    @property
    def _graph_inputs(self) -> list[_Tensor]:
        return [t for i, t in enumerate(self._inputs) if i != self._mbatch_index]

    # -------------------------------------------------------------- feeds

    def _mismatch(self, what: str, problem: str) -> AclInputError:
        gears = ""
        if self.dynamic_mode == "dynamic_batch_size":
            gears = f"; compiled batch gears: {', '.join(map(str, self.gears))}"
        elif self.dynamic_mode == "dynamic_dims" and self.gears:
            gears = "; compiled gears: " + " | ".join(
                ", ".join(f"{n}{list(s)}" for n, s in g.items()) for g in self.gears)
        return AclInputError(f"runtime=acl: {what} of {self.om_path.name}: {problem}{gears}")

    def _prepare(self, feeds: Mapping[str, Any]) -> tuple[list[np.ndarray], int | None, Any]:
        """Validated arrays in model order, the feed batch and the gear to run (batch or dims gear)."""
        expected = [t.name for t in self._graph_inputs]
        missing = [n for n in expected if n not in feeds]
        extra = [n for n in feeds if n not in expected]
        if missing or extra:
            raise AclInputError(f"runtime=acl: {self.om_path.name} takes inputs {expected}; "
                                f"missing {missing}, unexpected {extra}")
        arrays = []
        for tensor in self._graph_inputs:
            array = np.asarray(feeds[tensor.name])
            what = f"input {tensor.name!r}"
            if array.dtype != tensor.dtype:
                raise self._mismatch(what, f"expected dtype {tensor.dtype}, got {array.dtype} (no implicit cast)")
            if array.ndim != len(tensor.dims) or any(d not in (-1, s) for d, s in zip(tensor.dims, array.shape)):
                raise self._mismatch(what, f"expected shape {_shape_text(tensor.dims)}, got {tuple(array.shape)}")
            arrays.append(array)
        if self.dynamic_mode == "dynamic_batch_size":
            return self._batch_gear(arrays)
        if self.dynamic_mode == "dynamic_dims":
            full = [int(d) for a in arrays for d in a.shape]
            if self.gears is not None:
                shapes = {t.name: tuple(a.shape) for t, a in zip(self._graph_inputs, arrays)}
                if shapes not in self.gears:
                    raise self._mismatch("the inputs", f"shapes {shapes} are not a compiled gear")
            for tensor, array in zip(self._graph_inputs, arrays):
                if array.nbytes > tensor.size:
                    raise self._mismatch(f"input {tensor.name!r}",
                                         f"{array.nbytes} bytes exceed its {tensor.size}-byte buffer")
            return arrays, None, full
        return arrays, None, None

    def _batch_gear(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], int, int]:
        batches = {}
        for tensor, array in zip(self._graph_inputs, arrays):
            for axis, dim in enumerate(tensor.dims):
                if dim == -1:
                    batches[tensor.name] = array.shape[axis]
        values = set(batches.values())
        if len(values) != 1:
            raise self._mismatch("the inputs", f"inputs disagree on the batch size: {batches}")
        batch = values.pop()
        fitting = [g for g in self.gears if g >= batch]
        if batch < 1 or not fitting:
            raise self._mismatch("the inputs", f"batch {batch} has no gear to run in")
        gear = fitting[0]
        if gear != batch:
            padded = []
            for tensor, array in zip(self._graph_inputs, arrays):
                for axis, dim in enumerate(tensor.dims):
                    if dim == -1:  # repeat the last sample: real data keeps padded rows numerically sane
                        filler = np.repeat(np.take(array, [batch - 1], axis=axis), gear - batch, axis=axis)
                        array = np.concatenate([array, filler], axis=axis)
                padded.append(array)
            arrays = padded
        return arrays, batch, gear

    # -------------------------------------------------------------- one execution

    def _upload(self, tensor: _Tensor, array: np.ndarray) -> None:
        # bytes_to_ptr pointers are valid only while their bytes object lives: `keep` holds it to the copy.
        self.traffic.count("acl.util.bytes_to_ptr" if self._host.modern else "acl.util.numpy_to_ptr")
        ptr, keep = self._host.source(array)
        self._call("acl.rt.memcpy (host to device)", self._acl.rt.memcpy, tensor.device_ptr, tensor.size, ptr,
                   array.nbytes, ACL_MEMCPY_HOST_TO_DEVICE, h2d=array.nbytes)
        del keep

    def _select_gear(self, gear: Any) -> None:
        """Configure the mbatch input for ``gear`` (a set_* call fills it), once per gear change."""
        if gear is None or gear == self._current_gear:
            return
        if self.dynamic_mode == "dynamic_batch_size":
            self._call("acl.mdl.set_dynamic_batch_size", self._acl.mdl.set_dynamic_batch_size, self._model_id,
                       self._in_dataset, self._mbatch_index, gear)
        elif self.dynamic_mode == "dynamic_dims":
            self._call("acl.mdl.set_input_dynamic_dims", self._acl.mdl.set_input_dynamic_dims, self._model_id,
                       self._in_dataset, self._mbatch_index, {"dimCount": len(gear), "name": "", "dims": list(gear)})
        self._current_gear = gear

    def _execute(self) -> float:
        start = time.perf_counter()
        self._call("acl.mdl.execute", self._acl.mdl.execute, self._model_id, self._in_dataset, self._out_dataset)
        elapsed = (time.perf_counter() - start) * 1e3
        self.timings["npu_compute_ms"].append(elapsed)
        for tensor in self._outputs:
            tensor.cur_dims = tensor.dims if self.dynamic_mode == "static" else None
        return elapsed

    def _current_dims(self, tensor: _Tensor) -> list[int]:
        if tensor.cur_dims is None:  # dynamic: ask once per execution
            index = self._outputs.index(tensor)
            self.traffic.count("acl.mdl.get_cur_output_dims")
            tensor.cur_dims = self._dims("acl.mdl.get_cur_output_dims",
                                         self._acl.mdl.get_cur_output_dims(self._desc, index))
        return tensor.cur_dims

    def _current_bytes(self, tensor: _Tensor) -> int:
        count = int(np.prod(self._current_dims(tensor), dtype=np.int64)) * tensor.dtype.itemsize
        if count > tensor.size:
            raise AclError("acl.mdl.get_cur_output_dims", None,
                           f"output {tensor.name!r} {tensor.cur_dims} needs {count} bytes, its buffer has {tensor.size}")
        return count

    def _download(self, tensor: _Tensor) -> np.ndarray:
        dims, count = self._current_dims(tensor), self._current_bytes(tensor)
        acl = self._acl
        if self._host.modern:
            self._call("acl.rt.memcpy (device to host)", acl.rt.memcpy, tensor.host_ptr, tensor.size,
                       tensor.device_ptr, count, ACL_MEMCPY_DEVICE_TO_HOST, d2h=count)
            self.traffic.count("acl.util.ptr_to_bytes")
            raw = acl.util.ptr_to_bytes(tensor.host_ptr, count)
            return np.frombuffer(bytearray(raw), dtype=tensor.dtype).reshape(dims)
        array = np.empty(dims, dtype=tensor.dtype)  # acllite's fallback: copy straight into numpy's memory
        self.traffic.count("acl.util.numpy_to_ptr")
        self._call("acl.rt.memcpy (device to host)", acl.rt.memcpy, acl.util.numpy_to_ptr(array), count,
                   tensor.device_ptr, count, ACL_MEMCPY_DEVICE_TO_HOST, d2h=count)
        return array

    # -------------------------------------------------------------- release

    def _release(self) -> list[str]:
        """Release everything acquired so far, in the documented order; returns the failures."""
        self._closed = True
        acl = self._acl
        if acl is None:
            return []
        problems: list[str] = []

        def attempt(call: str, fn, *args) -> None:
            try:
                ret = fn(*args)
            except Exception as exc:  # keep releasing the rest
                problems.append(f"{call}: {exc}")
                return
            if ret != ACL_SUCCESS:
                problems.append(f"{call} failed: ret={ret}")

        if self._context is not None:
            attempt("acl.rt.set_context", acl.rt.set_context, self._context)
        for buffer in self._data_buffers:
            attempt("acl.destroy_data_buffer", acl.destroy_data_buffer, buffer)
        for ptr in self._device_ptrs:
            attempt("acl.rt.free", acl.rt.free, ptr)
        for ptr in self._host_ptrs:
            attempt("acl.rt.free_host", acl.rt.free_host, ptr)
        self._data_buffers, self._device_ptrs, self._host_ptrs = [], [], []
        for dataset in (self._in_dataset, self._out_dataset):
            if dataset is not None:
                attempt("acl.mdl.destroy_dataset", acl.mdl.destroy_dataset, dataset)
        self._in_dataset = self._out_dataset = None
        if self._desc is not None:
            attempt("acl.mdl.destroy_desc", acl.mdl.destroy_desc, self._desc)
            self._desc = None
        if self._model_id is not None:
            attempt("acl.mdl.unload", acl.mdl.unload, self._model_id)
            self._model_id = None
        if self._context is not None:
            attempt("acl.rt.destroy_context", acl.rt.destroy_context, self._context)
            self._context = None
        if self._device_set:
            attempt("acl.rt.reset_device", acl.rt.reset_device, self.device_id)
            self._device_set = False
        if self._acl_acquired:
            self._acl_acquired = False
            try:
                release_acl(acl)
            except AclError as exc:
                problems.append(str(exc))
        return problems


class AclCacheBackend:
    """The kv_cache graph's cache in the model's own ``past_key_values`` input buffer (see the module docstring)."""

    def __init__(self, runtime: AclRuntime) -> None:
        self.runtime = runtime
        self.contract = runtime.contract
        self.traffic = runtime.traffic
        past = runtime.tensor(gc.PAST_KEY_VALUES)
        if -1 in past.dims or len(past.dims) != len(self.contract.cache_shape(1, 1)):
            raise AscendLabError(f"runtime=acl: {runtime.om_path.name}'s {gc.PAST_KEY_VALUES} is {past.dims}; the "
                                 "kv_cache graph is compiled with a static capacity and batch (atc.dynamic_mode=auto)")
        self.fixed_capacity, self.compiled_batch = past.dims[0], past.dims[1]
        if runtime.dynamic_mode == "dynamic_dims" and runtime.gears:
            self.seq_gears = tuple(sorted({g[gc.INPUT_IDS][1] for g in runtime.gears}))
        else:
            self.seq_gears = (runtime.tensor(gc.INPUT_IDS).dims[1],)
        self.slot_bytes = self.contract.slot_elements(self.compiled_batch) * past.dtype.itemsize
        self.batch = self.capacity = 0
        self._pads = None

    def allocate(self, batch: int, capacity: int) -> None:
        if batch != self.compiled_batch:
            raise ConfigError("benchmark.batch_size", batch,
                              f"{self.runtime.om_path.name} was compiled for batch {self.compiled_batch} (the kv_cache "
                              "graph's batch is static); compile for this batch (task=compile "
                              f"benchmark.batch_size={batch}) or run the compiled one")
        self.runtime.zero_input(gc.PAST_KEY_VALUES)
        self.batch, self.capacity = batch, self.fixed_capacity

    def execute(self, input_ids, position_ids: np.ndarray, past_length: int, pad_lengths: np.ndarray | None):
        with self.runtime.bound():
            return self._execute(input_ids, position_ids, past_length, pad_lengths)

    def _execute(self, input_ids, position_ids: np.ndarray, past_length: int, pad_lengths: np.ndarray | None):
        rt = self.runtime
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim == 1:
            ids = ids[:, None]
        start = time.perf_counter()
        rt.write_input(gc.INPUT_IDS, ids)
        rt.write_input(gc.POSITION_IDS, np.ascontiguousarray(position_ids, dtype=np.int64))
        rt.write_input(gc.PAST_LENGTH, np.array([past_length], dtype=np.int64))
        if pad_lengths is not None:  # constant through a generation: written once, at the prefill
            rt.write_input(gc.PAD_LENGTHS, np.ascontiguousarray(pad_lengths, dtype=np.int64))
        rt.timings["h2d_ms"].append((time.perf_counter() - start) * 1e3)
        rt.execute({gc.INPUT_IDS: ids.shape, gc.POSITION_IDS: ids.shape, gc.PAST_LENGTH: (1,),
                    gc.PAD_LENGTHS: (self.batch,), gc.PAST_KEY_VALUES: self.contract.cache_shape(self.capacity,
                                                                                              self.batch)})
        # The contract fixes these shapes, so no get_cur_output_dims call is needed per step.
        present = (ids.shape[1], *self.contract.cache_shape(1, self.batch)[1:])
        rt.copy_output_to_input(gc.PRESENT_KEY_VALUES, gc.PAST_KEY_VALUES, past_length * self.slot_bytes, present)
        start = time.perf_counter()
        token = rt.read_output(gc.NEXT_TOKEN, (self.batch,)).astype(np.int64, copy=False)
        rt.timings["d2h_ms"].append((time.perf_counter() - start) * 1e3)
        return token

    def to_host(self, tokens) -> np.ndarray:
        return np.asarray(tokens, dtype=np.int64)

    def last_logits(self) -> np.ndarray:
        return self.runtime.read_output(gc.LOGITS, (self.batch, self.contract.dims.vocab_size))

    def last_layer_hidden(self) -> np.ndarray:
        if not self.contract.layer_outputs:
            raise no_layer_outputs("acl")
        return self.runtime.read_output(gc.LAYER_HIDDEN_STATES, self.contract.layer_hidden_shape(self.batch))
