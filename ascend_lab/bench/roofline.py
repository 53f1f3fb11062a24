"""The memory-bandwidth roofline of a decode step, defined once: the most decode tokens/s reading what a step
reads allows. ``task=bench`` (scenario=generate) logs it, and ``benchmarks/`` read it from there.

    roofline tokens/s  = batch × bandwidth / bytes per decode step       (:func:`roofline_tokens_s`)
    roofline fraction  = measured decode tokens/s / roofline tokens/s    (``roofline_fraction``)

**Bytes per decode step** (:func:`decode_step_bytes`) are the weights plus the KV cache. A greedy decode step
reads every weight once whatever the batch (a matrix-vector product per weight matrix at batch 1, a thin
matrix-matrix product at batch b: the same bytes). Weights (:func:`step_weight_bytes`) are the exported graph's
initializers that a step reads in full (:func:`weight_bytes_per_step` is the rule): every initializer some node
consumes, except tables that are only ever the data input of ``Gather`` (an embedding lookup reads one row per
token; a tied LM head reads the whole table through its ``MatMul``, so a table used by both is counted); the
torch runtime, which has no graph, counts its parameters (:func:`parameter_bytes`). **The KV cache is counted**:
decode step ``k`` (1 … new_tokens − 1) attends to ``prompt_len + k`` positions of ``contract.slot_elements(batch)``
elements each, and the mean over the generation's steps is exact, because the roofline time of a generation is
the sum of its steps' bytes over the bandwidth. Positions count what the attention needs; a graph that reads
every allocated slot (masked) reads more, and its fraction shows it.

**Bandwidth** is measured on the device the decode runs on, once per host and device, and cached
(:func:`cached_bandwidth`, one small JSON per host and device in ``telemetry.bandwidth_cache_dir``, written whole
under a lock; a file that cannot be read or describes another host or device is measured again, with a warning):

- a CPU: reductions (``np.add.reduce``, ``np.maximum.reduce``: both read their input once, write nothing and
  release the GIL) over a float32 array larger than any cache (:data:`MIN_ROOFLINE_ARRAY_GB`), each on one thread
  and on ``threads`` threads (each thread reduces one contiguous chunk), and a BLAS matrix-vector product over the
  same array as a [:data:`GEMV_ROWS`, n] matrix (the kernel a decode step runs); the best median (a sum can be
  compute-bound on one core before it is memory-bound; a tuned GEMV may prefetch better than either) is the
  figure: bytes **read** per second (:func:`measure_read_bandwidth`). numpy backs arrays this large with
  transparent huge pages (it advises them ``MADV_HUGEPAGE``); the runtimes' weights are in huge pages too only where
  the host runs THP in ``always`` mode (benchmarks/README.md), otherwise the kernels read through larger pages than
  the decode;
- a CUDA or NPU device through torch: ``sum`` and ``amax`` over a float32 tensor in device memory, synchronised
  around each pass; bytes **read** per second (:func:`measure_torch_read_bandwidth`);
- an NPU reached through pyACL alone: a device-to-device ``acl.rt.memcpy``, the one pyACL kernel that needs no
  model. A copy reads and writes each byte, so its figure counts both (bytes **copied**, read + write, per second,
  as STREAM's copy does) and is logged as ``roofline_copy_gb_s``, never as a read figure
  (:func:`measure_acl_d2d_bandwidth`).

A copy's bandwidth is measured beside the read kernels for reference. GB here is 10⁹ bytes; every figure is the
median of ``repeats`` timed passes after one untimed pass. Import-light: numpy only at import; onnx, psutil,
torch, pyACL and the telemetry types are imported when used.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import re
import socket
import statistics
import time
from collections.abc import Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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
# Bytes per element of the float dtypes a graph computes in (numpy has no bfloat16 to ask).
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
CACHE_SCHEMA = 2  # 2: the figure is gb_s with what it counts (read, or copy: read + write)


@dataclass(frozen=True)
class Bandwidth:
    """One measurement of memory bandwidth (see the module docstring)."""

    gb_s: float  # the roofline's figure: the best median in by_kernel
    counts: str  # "read": bytes read per second; "copy": bytes read + written per second
    by_kernel: dict[str, float]  # "<kernel>_<threads>t" → GB/s, counted as ``counts`` says
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

    @property
    def metric(self) -> str:
        """The metric name of the figure: ``roofline_read_gb_s`` or ``roofline_copy_gb_s``."""
        return f"roofline_{self.counts}_gb_s"

    def as_dict(self) -> dict[str, float]:
        """Flat figures (for JSON and MLflow metrics): ``read_gb_s``, ``read_gb_s_sum_1t``, … (``copy_…`` for a
        copy)."""
        return {f"{self.counts}_gb_s": self.gb_s, **{f"{self.counts}_gb_s_{k}": v for k, v in self.by_kernel.items()},
                "copy_rw_gb_s": self.copy_rw_gb_s, "bandwidth_array_gb": self.array_gb,
                "bandwidth_threads": float(self.threads), "bandwidth_repeats": float(self.repeats),
                "bandwidth_seconds": self.seconds}

    def describe(self) -> str:
        kernels = ", ".join(f"{k} {v:.1f}" for k, v in self.by_kernel.items())
        return (f"{self.counts} bandwidth {self.gb_s:.1f} GB/s ({self.method} over a {self.array_gb:.2f} GB array, "
                f"median of {self.repeats} passes; GB/s by kernel: {kernels}); copy {self.copy_rw_gb_s:.1f} GB/s "
                "counting read + write")


def default_threads() -> int:
    """Physical cores: the thread count ``runtime.intra_op_threads=0`` gives onnxruntime's sessions."""
    from ascend_lab.runtimes.onnxruntime.runtime import physical_cores

    return physical_cores()


def _gb_s(nbytes: int, fn, repeats: int, sync=lambda: None) -> float:
    """GB/s moving ``nbytes`` per call of ``fn``: the median of ``repeats`` timed calls after one untimed call
    (threads start, TLBs warm, kernels load), each between two ``sync()``."""
    times = []
    for _ in range(repeats + 1):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times[1:]) / GB


def _check_size(gb: float, repeats: int) -> None:
    if gb <= 0 or repeats < 1:
        raise ValueError(f"need gb > 0 and repeats ≥ 1 (got gb={gb}, repeats={repeats})")


def measure_read_bandwidth(gb: float = DEFAULT_ARRAY_GB, repeats: int = DEFAULT_REPEATS,
                           threads: int | None = None) -> Bandwidth:
    """Host read bandwidth over a ``gb`` GB float32 array (see the module docstring).

    ``threads`` None: :func:`default_threads`. Any size is measured; only ``gb`` ≥
    :data:`MIN_ROOFLINE_ARRAY_GB` measures memory rather than caches (:attr:`Bandwidth.fits_roofline`).
    Holds 2 × ``gb`` GB while it runs (the array and the copy's target) and frees both.
    """
    _check_size(gb, repeats)
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
                by_kernel[f"{name}_{count}t"] = _gb_s(nbytes, lambda k=kernel, c=chunks: list(pool.map(k, c)),
                                                      repeats)
    if n >= GEMV_ROWS:
        matrix = data[: n - n % GEMV_ROWS].reshape(GEMV_ROWS, -1)
        vector = np.ones(GEMV_ROWS, dtype=np.float32)
        by_kernel["gemv_blas"] = _gb_s(matrix.nbytes, lambda: np.matmul(vector, matrix), repeats)
    target = np.empty_like(data)
    target.fill(0)  # resident before timing, like the source
    copy_rw = _gb_s(2 * nbytes, lambda: np.copyto(target, data), repeats)
    del data, target
    gc.collect()
    return Bandwidth(gb_s=max(by_kernel.values()), counts="read", by_kernel=by_kernel, copy_rw_gb_s=copy_rw,
                     array_gb=nbytes / GB, threads=threads, repeats=repeats,
                     seconds=time.perf_counter() - started)


def measure_torch_read_bandwidth(torch_device, gb: float = DEFAULT_ARRAY_GB,
                                 repeats: int = DEFAULT_REPEATS) -> Bandwidth:
    """Read bandwidth of a CUDA or NPU device (``torch.device``) through torch: ``sum`` and ``amax`` over a
    ``gb`` GB float32 tensor in its memory, each pass between two synchronisations; the copy beside them for
    reference. Holds 2 × ``gb`` GB of device memory while it runs and frees it."""
    import torch

    _check_size(gb, repeats)
    backend = getattr(torch, torch_device.type)  # torch.cuda or torch.npu: the same API
    started = time.perf_counter()
    n = int(gb * GB) // 4
    nbytes = n * 4
    data = torch.ones(n, dtype=torch.float32, device=torch_device)

    by_kernel = {f"{name}_device": _gb_s(nbytes, lambda k=kernel: k(data), repeats, backend.synchronize)
                 for name, kernel in (("sum", torch.sum), ("max", torch.amax))}
    target = torch.zeros_like(data)
    copy_rw = _gb_s(2 * nbytes, lambda: target.copy_(data), repeats, backend.synchronize)
    del data, target
    getattr(backend, "empty_cache", lambda: None)()  # torch.cpu (the same code path, tested anywhere) has none
    return Bandwidth(gb_s=max(by_kernel.values()), counts="read", by_kernel=by_kernel, copy_rw_gb_s=copy_rw,
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

    _check_size(gb, repeats)
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
            src, dst = pointers  # the untimed first pass also touches both buffers
            copy_rw = _gb_s(2 * nbytes, lambda: check("acl.rt.memcpy (device to device)", acl.rt.memcpy(
                dst, nbytes, src, nbytes, ACL_MEMCPY_DEVICE_TO_DEVICE)), repeats)
        finally:
            for ptr in pointers:
                acl.rt.free(ptr)
            if context is not None:
                acl.rt.destroy_context(context)
            acl.rt.reset_device(device_id)
    finally:
        release_acl(acl)
    return Bandwidth(gb_s=copy_rw, counts="copy", by_kernel={"d2d_copy": copy_rw}, copy_rw_gb_s=copy_rw,
                     array_gb=nbytes / GB, threads=0, repeats=repeats, seconds=time.perf_counter() - started,
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


def decode_step_bytes(weight_bytes: int, position_bytes: int, prompt_len: int, new_tokens: int) -> float:
    """Mean bytes a decode step of a greedy generation reads (see the module docstring): the weights, plus
    ``position_bytes`` (:func:`cache_position_bytes`) for each position step k attends to, ``prompt_len + k`` for
    k = 1 … new_tokens − 1, whose mean is ``prompt_len + new_tokens / 2``."""
    if new_tokens < 2:
        raise ValueError("a generation with no decode step has no decode roofline")
    return weight_bytes + position_bytes * (prompt_len + new_tokens / 2)


def cache_position_bytes(contract, batch: int) -> int:
    """KV-cache bytes of one position at ``batch`` for a graph contract (keys and values of every layer)."""
    return contract.slot_elements(batch) * DTYPE_BYTES[contract.dtype]


def roofline_tokens_s(batch: int, gb_s: float, step_bytes: float) -> float:
    """The most decode tokens/s reading ``step_bytes`` per step at ``gb_s`` allows at ``batch``."""
    if step_bytes <= 0:
        raise ValueError(f"step_bytes must be > 0 (got {step_bytes})")
    return batch * gb_s * GB / step_bytes


# ------------------------------------------------------------------------------------------------
# The cached measurement and a generate job's figures


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "unknown"


def measurement_plan(work, device) -> tuple[str, str]:
    """(method, device description) for ``work`` (a :class:`~ascend_lab.telemetry.energy.WorkDevice`): ``host``,
    ``torch`` (the job's torch device is that accelerator) or ``acl`` (an NPU reached through pyACL alone)."""
    if work.kind == "cpu":
        from ascend_lab.telemetry.environment import cpu_model

        return "host", f"cpu {cpu_model()}"
    if device is not None and getattr(device, "kind", None) == work.kind:
        return "torch", f"{work.kind}:{work.index} {device.name()}"
    from ascend_lab.cann import npu_smi

    chips = npu_smi.npu_smi_overview().chips
    name = chips[work.index].name if work.index < len(chips) else "NPU"
    return "acl", f"npu:{work.index} {name}"


def _measure(method: str, work, device, cfg) -> Bandwidth:
    if method == "host":
        return measure_read_bandwidth(cfg.bandwidth_array_gb, cfg.bandwidth_repeats)
    if method == "torch":
        return measure_torch_read_bandwidth(device.torch_device, cfg.bandwidth_array_gb, cfg.bandwidth_repeats)
    return measure_acl_d2d_bandwidth(work.index, cfg.bandwidth_array_gb, cfg.bandwidth_repeats)


def _problem(record: object, host: str, described: str, method: str) -> str | None:
    """Why a cached record cannot be used (None when it can)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema") != CACHE_SCHEMA:
        return f"schema {record.get('schema')!r}, not {CACHE_SCHEMA}"
    if record.get("host") != host or record.get("device") != described or record.get("method") != method:
        return f"it describes {record.get('host')!r} / {record.get('device')!r} / {record.get('method')!r}"
    value = record.get("gb_s")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"gb_s is {value!r}, not a positive number"
    if record.get("counts") not in ("read", "copy"):
        return f"counts is {record.get('counts')!r}, not read or copy"
    return None


def cached_bandwidth(cfg, cache_dir: Path, work, device) -> tuple[dict, Path, bool]:
    """(record, its file, whether it came from the cache) for the job's device (``cfg``: the telemetry group)."""
    from filelock import FileLock

    host = socket.gethostname()
    method, described = measurement_plan(work, device)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{_slug(host)}__{_slug(described)}__{method}.json"
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                problem = _problem(record, host, described, method)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                record, problem = None, f"unreadable ({type(exc).__name__}: {exc})"
            if problem is None:
                return record, path, True
            log.warning("bandwidth cache %s is invalid (%s); measuring the bandwidth again", path, problem)
        bandwidth = _measure(method, work, device, cfg)
        record = {"schema": CACHE_SCHEMA, "host": host, "device": described, "method": method,
                  "gb_s": bandwidth.gb_s, "counts": bandwidth.counts, "description": bandwidth.method,
                  "fits_roofline": bandwidth.fits_roofline, "figures": bandwidth.as_dict(),
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(staging, path)
        return record, path, False


def generate_roofline(cfg, cache_dir: Path, work, device, contract, batch: int, prompt_len: int, new_tokens: int,
                      weight_bytes: int, weights_from: str, decode_tokens_s: float | None):
    """The roofline figures of one generate job (``cfg``: the telemetry group): ``roofline_tokens_s``,
    ``roofline_step_bytes``, ``roofline_weight_bytes``, ``roofline_read_gb_s`` or ``roofline_copy_gb_s`` and
    ``roofline_fraction``, with tags saying where the bandwidth and the weights came from. A measurement that
    fails is a warning and a ``roofline.absent`` tag, never the job's failure."""
    from ascend_lab.telemetry.energy import Figures

    figures = Figures()
    if new_tokens < 2:
        figures.tags["roofline.absent"] = "benchmark.new_tokens < 2: the generation has no decode step"
        return figures
    try:
        record, path, hit = cached_bandwidth(cfg, cache_dir, work, device)
    except Exception as exc:  # out of device memory, a pyACL error: the throughput figures stand without it
        log.warning("roofline: the bandwidth could not be measured (%s: %s)", type(exc).__name__, exc)
        figures.tags["roofline.absent"] = f"bandwidth measurement failed: {type(exc).__name__}: {exc}"
        return figures
    step_bytes = decode_step_bytes(weight_bytes, cache_position_bytes(contract, batch), prompt_len, new_tokens)
    gb_s = float(record["gb_s"])
    tokens_s = roofline_tokens_s(batch, gb_s, step_bytes)
    figures.metrics.update({"roofline_tokens_s": tokens_s, "roofline_step_bytes": step_bytes,
                            f"roofline_{record['counts']}_gb_s": gb_s, "roofline_weight_bytes": float(weight_bytes)})
    if decode_tokens_s:
        figures.metrics["roofline_fraction"] = decode_tokens_s / tokens_s
    figures.tags.update({
        "roofline.bandwidth": f"{gb_s:.1f} GB/s {record['counts']}, {record.get('description', record['method'])} "
                              f"({'cached' if hit else 'measured'}: {path})",
        "roofline.bandwidth_fits": str(bool(record.get("fits_roofline", True))).lower(),
        "roofline.weights": weights_from,
    })
    return figures


__all__ = ["Bandwidth", "CACHE_SCHEMA", "DEFAULT_ARRAY_GB", "DEFAULT_REPEATS", "DTYPE_BYTES", "GB", "GEMV_ROWS",
           "MIN_ROOFLINE_ARRAY_GB", "READ_KERNELS", "cache_position_bytes", "cached_bandwidth", "decode_step_bytes",
           "default_threads", "generate_roofline", "measure_acl_d2d_bandwidth", "measure_read_bandwidth",
           "measure_torch_read_bandwidth", "measurement_plan", "parameter_bytes", "roofline_tokens_s",
           "step_weight_bytes", "weight_bytes_per_step"]
