"""The hardware limit beside every decode throughput: the device's read bandwidth and a generate job's roofline.

The bandwidth is measured once per host and device and cached in ``telemetry.bandwidth_cache_dir`` (under
``outputs/`` by default), one small JSON per host and device, so a sweep measures it once. How it is measured
is :mod:`ascend_lab.bench.roofline`'s (the one roofline helper, which ``benchmarks/`` use too): host reductions
on the CPU, torch reductions on a CUDA or NPU device, a device-to-device ``acl.rt.memcpy`` where the NPU is
reached through pyACL alone. A cache file that cannot be read, is not JSON, or does not describe this host and
device is measured again, with a warning; files are written whole (a rename), under a lock, so parallel jobs
measure once and never read half a file.

A generate job's roofline: the bytes a decode step reads are the weights (the exported graph's initializers a
step reads, :func:`~ascend_lab.bench.roofline.step_weight_bytes`, or the torch model's parameter bytes) plus
the KV cache at each step's length (``contract.slot_elements(batch)`` × dtype bytes per position), averaged
over the generation's steps (:func:`~ascend_lab.bench.roofline.decode_step_bytes`). The job logs
``roofline_tokens_s`` (batch × bandwidth / bytes per step) and ``roofline_fraction`` (``decode_tokens_s`` over
it), with tags saying where the bandwidth and the weights came from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import time
from pathlib import Path

from ascend_lab.bench import roofline
from ascend_lab.config.telemetry import TelemetryConfig
from ascend_lab.telemetry.energy import Figures, WorkDevice

log = logging.getLogger(__name__)

CACHE_SCHEMA = 1


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "unknown"


def measurement_plan(work: WorkDevice, device) -> tuple[str, str]:
    """(method, device description) for ``work``: ``host``, ``torch`` (the job's torch device is that
    accelerator) or ``acl`` (an NPU reached through pyACL alone)."""
    if work.kind == "cpu":
        from ascend_lab.telemetry.environment import cpu_model

        return "host", f"cpu {cpu_model()}"
    if device is not None and getattr(device, "kind", None) == work.kind:
        return "torch", f"{work.kind}:{work.index} {device.name()}"
    from ascend_lab.cann import npu_smi

    chips = npu_smi.npu_smi_overview().chips
    name = chips[work.index].name if work.index < len(chips) else "NPU"
    return "acl", f"npu:{work.index} {name}"


def _measure(method: str, work: WorkDevice, device, cfg: TelemetryConfig) -> roofline.Bandwidth:
    if method == "host":
        return roofline.measure_read_bandwidth(cfg.bandwidth_array_gb, cfg.bandwidth_repeats)
    if method == "torch":
        return roofline.measure_torch_read_bandwidth(device.torch_device, cfg.bandwidth_array_gb, cfg.bandwidth_repeats)
    return roofline.measure_acl_d2d_bandwidth(work.index, cfg.bandwidth_array_gb, cfg.bandwidth_repeats)


def _problem(record: object, host: str, described: str, method: str) -> str | None:
    """Why a cached record cannot be used (None when it can)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("schema") != CACHE_SCHEMA:
        return f"schema {record.get('schema')!r}, not {CACHE_SCHEMA}"
    if record.get("host") != host or record.get("device") != described or record.get("method") != method:
        return f"it describes {record.get('host')!r} / {record.get('device')!r} / {record.get('method')!r}"
    value = record.get("read_gb_s")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"read_gb_s is {value!r}, not a positive number"
    return None


def cached_bandwidth(cfg: TelemetryConfig, cache_dir: Path, work: WorkDevice, device) -> tuple[dict, Path, bool]:
    """(record, its file, whether it came from the cache) for the job's device."""
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
                  "read_gb_s": bandwidth.read_gb_s, "description": bandwidth.method,
                  "fits_roofline": bandwidth.fits_roofline, "figures": bandwidth.as_dict(),
                  "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        staging = path.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(staging, path)
        return record, path, False


def generate_roofline(cfg: TelemetryConfig, cache_dir: Path, work: WorkDevice, device, contract, batch: int,
                      prompt_len: int, new_tokens: int, weight_bytes: int, weights_from: str,
                      decode_tokens_s: float | None) -> Figures:
    """The roofline figures of one generate job (see the module docstring); a measurement that fails is a
    warning and a ``roofline.absent`` tag, never the job's failure."""
    figures = Figures()
    if new_tokens < 2:
        figures.tags["roofline.absent"] = "benchmark.new_tokens < 2: the generation has no decode step"
        return figures
    try:
        record, path, hit = cached_bandwidth(cfg, cache_dir, work, device)
    except Exception as exc:  # out of device memory, a pyACL error: the throughput figures stand without it
        log.warning("roofline: the read bandwidth could not be measured (%s: %s)", type(exc).__name__, exc)
        figures.tags["roofline.absent"] = f"bandwidth measurement failed: {type(exc).__name__}: {exc}"
        return figures
    position_bytes = contract.slot_elements(batch) * roofline.DTYPE_BYTES[contract.dtype]
    step_bytes = roofline.decode_step_bytes(weight_bytes, position_bytes,
                                            roofline.decode_lengths(prompt_len, new_tokens))
    read_gb_s = float(record["read_gb_s"])
    tokens_s = roofline.roofline_tokens_s(batch, read_gb_s, step_bytes)
    figures.metrics.update({"roofline_tokens_s": tokens_s, "roofline_step_bytes": step_bytes,
                            "roofline_read_gb_s": read_gb_s, "roofline_weight_bytes": float(weight_bytes)})
    if decode_tokens_s:
        figures.metrics["roofline_fraction"] = decode_tokens_s / tokens_s
    figures.tags.update({
        "roofline.bandwidth": f"{read_gb_s:.1f} GB/s, {record.get('description', record['method'])} "
                              f"({'cached' if hit else 'measured'}: {path})",
        "roofline.bandwidth_fits": str(bool(record.get("fits_roofline", True))).lower(),
        "roofline.weights": weights_from,
    })
    return figures


__all__ = ["CACHE_SCHEMA", "cached_bandwidth", "generate_roofline", "measurement_plan"]
