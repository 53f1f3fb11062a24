"""The memory-bandwidth roofline of a decode step: the most tokens/s that reading the weights allows.

A greedy decode step reads every weight of the model once, whatever the batch (a matrix-vector product
per weight matrix at batch 1, a thin matrix-matrix product at batch b: the same bytes). While the step
is memory-bound its time cannot fall below bytes read / read bandwidth, so

    roofline steps/s   = read bandwidth / bytes per step
    roofline tokens/s  = batch × roofline steps/s                      (:func:`roofline_tokens_s`)
    roofline fraction  = measured decode tokens/s / roofline tokens/s  (:func:`roofline_fraction`)

**Bytes per step** (:func:`step_weight_bytes`) are the exported graph's initializers that a step reads
in full (:func:`weight_bytes_per_step` is the rule): every initializer some node consumes, except tables
that are only ever the data input of ``Gather`` (an embedding lookup reads one row per token; a tied LM
head reads the whole table through its ``MatMul``, so a table used by both is counted). Initializers no
node consumes are not read and not counted. The benchmark scripts (``benchmarks/``) leave the KV cache out:
at the prompt and generation lengths they run it is well under 1 % of the weights at batch 1;
:func:`kv_cache_bytes_per_step` gives its size so a report can show that. The CLI counts it (below).

**Read bandwidth** (:func:`measure_read_bandwidth`) is measured on the machine, in the same run as the
decode it is compared with: reductions (``np.add.reduce``, ``np.maximum.reduce``: both read their input
once, write nothing and release the GIL) over a float32 array larger than any cache
(:data:`MIN_ROOFLINE_ARRAY_GB`), each on one thread and on ``threads`` threads (each thread reduces one
contiguous chunk), and a BLAS matrix-vector product over the same array as a [:data:`GEMV_ROWS`, n] matrix
(numpy's ``matmul`` on its BLAS's own threads: the kernel a decode step runs, tuned by others); GB/s =
bytes read / median time of ``repeats`` timed passes after one untimed pass. The roofline uses the best
of these medians (a sum can be compute-bound on one core before it is memory-bound; a max is cheaper per
byte; a tuned GEMV may prefetch better than either): the most this machine was seen to read. A copy's
bandwidth (bytes read + written / time) is measured beside it for reference only. numpy backs arrays this large
with transparent huge pages (it advises them ``MADV_HUGEPAGE``); the runtimes' weights are in huge pages too only
where the host runs THP in ``always`` mode (benchmarks/README.md), otherwise the kernels read through larger pages
than the decode.

**On a device** the same figure comes from the device's own memory: :func:`measure_torch_read_bandwidth`
(CUDA, or an NPU through torch_npu: ``sum`` and ``amax`` over a float32 tensor in device memory, synchronised
around each pass) and, where only pyACL is there, :func:`measure_acl_d2d_bandwidth` (a device-to-device
``acl.rt.memcpy`` of the array, the one pyACL kernel that needs no model; a copy reads and writes each byte, so
its figure counts both, as STREAM's copy does, and it is the roofline's figure there).

**A generate job's roofline** (the CLI, :mod:`ascend_lab.telemetry.bandwidth`) adds the KV cache to the weights:
decode step ``k`` reads the weights and the cache at its current length, so over a generation the mean bytes
per step are weights + bytes per cache position × the mean length (:func:`decode_step_bytes`); the mean is
exact because the roofline time of a generation is the sum of its steps' bytes over the bandwidth. Positions
count what the attention needs; a graph that reads every allocated slot (masked) reads more, and its fraction
shows it.

GB here is 10⁹ bytes. Import-light: numpy only at import; onnx (:func:`step_weight_bytes`), psutil (the default
thread count), torch and pyACL are imported when used.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GB = 1e9  # bytes
# An array smaller than this is (partly) served by the caches, so its "bandwidth" is not memory's;
# 1 GB is far above the last-level cache of any CPU this runs on (hundreds of MB at most).
MIN_ROOFLINE_ARRAY_GB = 1.0
DEFAULT_ARRAY_GB = 2.0
DEFAULT_REPEATS = 5  # timed passes per kernel and thread count (after one untimed pass)
# name → a numpy reduction that reads its input once and releases the GIL.
READ_KERNELS = {"sum": np.add.reduce, "max": np.maximum.reduce}
# Rows of the matrix the GEMV kernel reads (Qwen2's hidden sizes are of this order); its output, n / rows
# floats, is under 0.1 % of the bytes read.
GEMV_ROWS = 1024


@dataclass(frozen=True)
class Bandwidth:
    """One measurement of host memory bandwidth (see the module docstring)."""

    read_gb_s: float  # the roofline's figure: the best median in by_kernel
    by_kernel: dict[str, float]  # "<kernel>_<threads>t" → GB/s read
    copy_rw_gb_s: float  # a copy: bytes read + written / time (reference only)
    array_gb: float
    threads: int  # the most threads used (0: a device kernel)
    repeats: int
    seconds: float = field(default=0.0, compare=False)  # wall time of the whole measurement
    method: str = field(default="host reductions", compare=False)  # what was timed, for reports

    @property
    def fits_roofline(self) -> bool:
        """Whether the array was large enough for the figure to be memory's, not a cache's."""
        return self.array_gb >= MIN_ROOFLINE_ARRAY_GB

    def as_dict(self) -> dict[str, float]:
        """Flat figures (for JSON and MLflow metrics): ``read_gb_s``, ``read_gb_s_sum_1t``, …"""
        return {"read_gb_s": self.read_gb_s, **{f"read_gb_s_{k}": v for k, v in self.by_kernel.items()},
                "copy_rw_gb_s": self.copy_rw_gb_s, "bandwidth_array_gb": self.array_gb,
                "bandwidth_threads": float(self.threads), "bandwidth_repeats": float(self.repeats),
                "bandwidth_seconds": self.seconds}

    def describe(self) -> str:
        kernels = ", ".join(f"{k} {v:.1f}" for k, v in self.by_kernel.items())
        return (f"read bandwidth {self.read_gb_s:.1f} GB/s (the best read kernel over a {self.array_gb:.2f} GB float32 "
                f"array, median of {self.repeats} passes; GB/s by kernel and threads: {kernels}); copy "
                f"{self.copy_rw_gb_s:.1f} GB/s counting read + write")


def default_threads() -> int:
    """Physical cores: the thread count ``runtime.intra_op_threads=0`` gives onnxruntime's sessions."""
    from ascend_lab.runtimes.onnxruntime.runtime import physical_cores

    return physical_cores()


def measure_read_bandwidth(gb: float = DEFAULT_ARRAY_GB, repeats: int = DEFAULT_REPEATS,
                           threads: int | None = None) -> Bandwidth:
    """Host read bandwidth over a ``gb`` GB float32 array (see the module docstring).

    ``threads`` None: :func:`default_threads`. Any size is measured; only ``gb`` ≥
    :data:`MIN_ROOFLINE_ARRAY_GB` measures memory rather than caches (:attr:`Bandwidth.fits_roofline`).
    Holds 2 × ``gb`` GB while it runs (the array and the copy's target) and frees both.
    """
    if gb <= 0 or repeats < 1:
        raise ValueError(f"need gb > 0 and repeats ≥ 1 (got gb={gb}, repeats={repeats})")
    threads = threads or default_threads()
    started = time.perf_counter()
    n = max(int(gb * GB) // 4, threads)
    nbytes = n * 4
    data = np.ones(n, dtype=np.float32)  # written once, so every page is resident before timing
    by_kernel: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for name, kernel in READ_KERNELS.items():
            for count in sorted({1, threads}):
                chunks = np.array_split(data, count)
                times = []
                for _ in range(repeats + 1):  # the first pass is untimed (threads start, TLBs warm)
                    t0 = time.perf_counter()
                    list(pool.map(kernel, chunks))
                    times.append(time.perf_counter() - t0)
                by_kernel[f"{name}_{count}t"] = nbytes / statistics.median(times[1:]) / GB
    if n >= GEMV_ROWS:
        matrix = data[: n - n % GEMV_ROWS].reshape(GEMV_ROWS, -1)
        vector = np.ones(GEMV_ROWS, dtype=np.float32)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            np.matmul(vector, matrix)
            times.append(time.perf_counter() - t0)
        by_kernel["gemv_blas"] = matrix.nbytes / statistics.median(times[1:]) / GB
    target = np.empty_like(data)
    target.fill(0)  # resident before timing, like the source
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        np.copyto(target, data)
        times.append(time.perf_counter() - t0)
    copy_rw = 2 * nbytes / statistics.median(times[1:]) / GB
    del data, target
    gc.collect()
    return Bandwidth(read_gb_s=max(by_kernel.values()), by_kernel=by_kernel, copy_rw_gb_s=copy_rw,
                     array_gb=nbytes / GB, threads=threads, repeats=repeats,
                     seconds=time.perf_counter() - started)


def _median_gb_s(nbytes: int, times: list[float]) -> float:
    return nbytes / statistics.median(times[1:]) / GB


def measure_torch_read_bandwidth(torch_device, gb: float = DEFAULT_ARRAY_GB,
                                 repeats: int = DEFAULT_REPEATS) -> Bandwidth:
    """Read bandwidth of a CUDA or NPU device (``torch.device``) through torch: ``sum`` and ``amax`` over a
    ``gb`` GB float32 tensor in its memory, each pass between two synchronisations; the copy beside them for
    reference. Holds 2 × ``gb`` GB of device memory while it runs and frees it."""
    import torch

    if gb <= 0 or repeats < 1:
        raise ValueError(f"need gb > 0 and repeats ≥ 1 (got gb={gb}, repeats={repeats})")
    backend = getattr(torch, torch_device.type)  # torch.cuda or torch.npu: the same API
    started = time.perf_counter()
    n = int(gb * GB) // 4
    nbytes = n * 4
    data = torch.ones(n, dtype=torch.float32, device=torch_device)

    def timed(fn) -> list[float]:
        times = []
        for _ in range(repeats + 1):  # the first pass is untimed (kernel load, allocator)
            backend.synchronize()
            t0 = time.perf_counter()
            fn()
            backend.synchronize()
            times.append(time.perf_counter() - t0)
        return times

    by_kernel = {f"{name}_device": _median_gb_s(nbytes, timed(lambda k=kernel: k(data)))
                 for name, kernel in (("sum", torch.sum), ("max", torch.amax))}
    target = torch.zeros_like(data)
    copy_rw = 2 * _median_gb_s(nbytes, timed(lambda: target.copy_(data)))
    del data, target
    getattr(backend, "empty_cache", lambda: None)()  # torch.cpu (the same code path, tested anywhere) has none
    return Bandwidth(read_gb_s=max(by_kernel.values()), by_kernel=by_kernel, copy_rw_gb_s=copy_rw,
                     array_gb=nbytes / GB, threads=0, repeats=repeats, seconds=time.perf_counter() - started,
                     method=f"torch sum/amax on {torch_device}")


def measure_acl_d2d_bandwidth(device_id: int = 0, gb: float = DEFAULT_ARRAY_GB,
                              repeats: int = DEFAULT_REPEATS) -> Bandwidth:
    """HBM bandwidth of NPU ``device_id`` where only pyACL is there: a ``gb`` GB device-to-device
    ``acl.rt.memcpy`` (synchronous), median of ``repeats`` passes after one untimed pass; GB/s counts the bytes
    read and written (see the module docstring). pyACL's process-wide init is shared with the pyACL runtime
    (:mod:`ascend_lab.runtimes.acl.pyacl`); everything acquired here is released, also on failure."""
    from ascend_lab.runtimes.acl.pyacl import (ACL_MEM_MALLOC_HUGE_FIRST, ACL_MEMCPY_DEVICE_TO_DEVICE, AclError,
                                           acquire_acl, import_acl, release_acl)

    if gb <= 0 or repeats < 1:
        raise ValueError(f"need gb > 0 and repeats ≥ 1 (got gb={gb}, repeats={repeats})")
    acl = import_acl()
    started = time.perf_counter()
    nbytes = int(gb * GB)
    pointers: list[int] = []
    context = None

    def check(call: str, ret: int) -> None:
        if ret != 0:
            raise AclError(call, ret)

    acquire_acl(acl)
    try:
        check("acl.rt.set_device", acl.rt.set_device(device_id))
        try:
            context, ret = acl.rt.create_context(device_id)
            check("acl.rt.create_context", ret)
            for _ in range(2):
                ptr, ret = acl.rt.malloc(nbytes, ACL_MEM_MALLOC_HUGE_FIRST)
                check("acl.rt.malloc", ret)
                pointers.append(ptr)
            src, dst = pointers
            times = []
            for _ in range(repeats + 1):  # the first pass is untimed (it also touches both buffers)
                t0 = time.perf_counter()
                check("acl.rt.memcpy (device to device)",
                      acl.rt.memcpy(dst, nbytes, src, nbytes, ACL_MEMCPY_DEVICE_TO_DEVICE))
                times.append(time.perf_counter() - t0)
        finally:
            for ptr in pointers:
                acl.rt.free(ptr)
            if context is not None:
                acl.rt.destroy_context(context)
            acl.rt.reset_device(device_id)
    finally:
        release_acl(acl)
    copy_rw = 2 * _median_gb_s(nbytes, times)
    return Bandwidth(read_gb_s=copy_rw, by_kernel={"d2d_copy": copy_rw}, copy_rw_gb_s=copy_rw, array_gb=nbytes / GB,
                     threads=0, repeats=repeats, seconds=time.perf_counter() - started,
                     method=f"pyACL device-to-device memcpy on NPU {device_id} (read + write)")


# ------------------------------------------------------------------------------------------------
# Bytes per decode step


def weight_bytes_per_step(initializer_bytes: Mapping[str, int],
                          uses: Mapping[str, Collection[tuple[str, int]]]) -> int:
    """Bytes a decode step reads in full, from each initializer's size and its uses.

    ``uses[name]``: the ``(op_type, input index)`` of every node input that names the initializer. An
    initializer with no use is not read; one whose every use is ``("Gather", 0)`` (the table of a lookup)
    is read a row per token, not in full; every other one is read in full once.
    """
    total = 0
    for name, nbytes in initializer_bytes.items():
        used = set(uses.get(name, ()))
        if not used or used == {("Gather", 0)}:
            continue
        total += nbytes
    return total


def step_weight_bytes(onnx_path: str | Path) -> int:
    """:func:`weight_bytes_per_step` of an ONNX graph (its external data is not loaded: sizes come from
    the initializers' dims and types)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name:
                uses.setdefault(name, set()).add((node.op_type, index))
    sizes = {init.name: int(np.prod(init.dims, dtype=np.int64))
             * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
             for init in model.graph.initializer}
    return weight_bytes_per_step(sizes, uses)


def parameter_bytes(parameters: Iterable) -> int:
    """Bytes of torch parameters (``model.parameters()``: a tied table appears once, and the LM head reads it
    whole, so this is the step's weight bytes of a PyTorch decoder)."""
    return sum(p.numel() * p.element_size() for p in parameters)


def kv_cache_bytes_per_step(slot_elements: int, capacity: int, itemsize: int) -> int:
    """Bytes of KV cache one step of the kv_cache graph reads: it attends over every slot of the allocated
    cache (masked), so ``capacity`` slots of ``slot_elements`` (``GraphContract.slot_elements(batch)``) of
    ``itemsize`` bytes."""
    return slot_elements * capacity * itemsize


# Bytes per element of the float dtypes a graph computes in (numpy has no bfloat16 to ask).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def decode_step_bytes(weight_bytes: int, cache_position_bytes: int, lengths: Iterable[int]) -> float:
    """Mean bytes a decode step reads over steps attending to ``lengths`` positions: the weights, plus
    ``cache_position_bytes`` (``GraphContract.slot_elements(batch)`` × the dtype's bytes) per position."""
    lengths = list(lengths)
    if not lengths:
        raise ValueError("a generation with no decode step has no decode roofline")
    return weight_bytes + cache_position_bytes * statistics.fmean(lengths)


def decode_lengths(prompt_len: int, new_tokens: int) -> range:
    """Positions each decode step of a greedy generation attends to: the prefill leaves ``prompt_len`` in the
    cache, and step k (1 … new_tokens − 1) adds its token and attends to ``prompt_len + k``."""
    return range(prompt_len + 1, prompt_len + new_tokens)


# ------------------------------------------------------------------------------------------------
# The roofline


def roofline_tokens_s(batch: int, read_gb_s: float, step_bytes: float) -> float:
    """The most decode tokens/s reading ``step_bytes`` per step at ``read_gb_s`` allows at ``batch``."""
    if step_bytes <= 0:
        raise ValueError(f"step_bytes must be > 0 (got {step_bytes})")
    return batch * read_gb_s * GB / step_bytes


def roofline_fraction(decode_tokens_s: float, batch: int, read_gb_s: float, step_bytes: float) -> float:
    """Measured decode tokens/s as a fraction of :func:`roofline_tokens_s`."""
    return decode_tokens_s / roofline_tokens_s(batch, read_gb_s, step_bytes)


__all__ = ["Bandwidth", "DEFAULT_ARRAY_GB", "DEFAULT_REPEATS", "DTYPE_BYTES", "GB", "MIN_ROOFLINE_ARRAY_GB",
           "GEMV_ROWS", "READ_KERNELS", "decode_lengths", "decode_step_bytes", "default_threads", "kv_cache_bytes_per_step",
           "measure_acl_d2d_bandwidth", "measure_read_bandwidth", "measure_torch_read_bandwidth", "parameter_bytes",
           "roofline_fraction", "roofline_tokens_s", "step_weight_bytes", "weight_bytes_per_step"]
