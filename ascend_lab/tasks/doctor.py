"""task=doctor: is this machine ready? The walkthrough's environment check, made complete.

Versions (torch, torch_npu, CANN), the resolved device with count, index and name, a matmul timed
on the device and on the CPU (warm-up, repeats, synchronised), device memory, and the Ascend
toolchain (npu-smi, atc, pyACL, toolkit version).
"""

from __future__ import annotations

from ascend_lab import cann
from ascend_lab.bench.stats import summarize
from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.device import HostTimer, measure
from ascend_lab.provenance import installed_version
from ascend_lab.report import format_table


def time_matmul(device, size: int, dtype_name: str, warmup: int, repeats: int, on_cpu: bool) -> float:
    """Median milliseconds of an N×N matmul on ``device`` (or the CPU)."""
    import torch

    dtype = getattr(torch, dtype_name)
    target = torch.device("cpu") if on_cpu else device.torch_device
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator, dtype=torch.float32).to(target, dtype)
    b = torch.randn(size, size, generator=generator, dtype=torch.float32).to(target, dtype)
    timer = HostTimer if on_cpu else device.timer
    samples = measure(lambda: torch.matmul(a, b), timer, warmup=warmup, iterations=repeats)
    return summarize(samples).p50


def run(cfg: AppConfig, ctx: JobContext) -> dict:
    import torch

    device = ctx.device
    doc = cfg.doctor
    smi = cann.query_npu_smi()
    atc_path = cann.find_atc(cfg.atc.toolkit_home)
    acl_ok, acl_why = cann.acl_importable()
    set_env = cann.find_set_env(cfg.atc.toolkit_home)

    device_ms = time_matmul(device, doc.matmul_size, doc.matmul_dtype, doc.warmup, doc.repeats, on_cpu=False)
    cpu_ms = time_matmul(device, doc.matmul_size, doc.matmul_dtype, doc.warmup, doc.repeats, on_cpu=True)
    memory = device.memory()

    metrics = {
        "matmul_ms_device": device_ms,
        "matmul_ms_cpu": cpu_ms,
        "matmul_speedup": cpu_ms / device_ms if device_ms > 0 else float("nan"),
        "matmul_tflops_device": 2 * doc.matmul_size ** 3 / (device_ms * 1e-3) / 1e12,
        "device_mem_reserved_mb": memory.reserved_mb,
        "device_mem_allocated_mb": memory.allocated_mb,
        "device_count": device.count(),
    }
    facts = {
        "torch": torch.__version__,
        "torch_npu": installed_version("torch_npu"),
        "CANN toolkit": cann.toolkit_version(cfg.atc.toolkit_home) or "not installed",
        "device": str(device.torch_device),
        "chosen because": device.reason,
        "device count": device.count(),
        "current index": device.index if device.is_accelerator else "-",
        "device name": device.name(),
        f"matmul {doc.matmul_size}² {doc.matmul_dtype} on device (ms)": device_ms,
        f"matmul {doc.matmul_size}² {doc.matmul_dtype} on CPU (ms)": cpu_ms,
        "speedup (CPU / device)": metrics["matmul_speedup"],
        "device memory reserved (MB)": memory.reserved_mb,
        "npu-smi": str(smi.path) if smi.path else "not found",
        "npu-smi chips": ", ".join(smi.names) or "-",
        "suggested atc.soc_version": smi.soc_version or "-",
        "atc": str(atc_path) if atc_path else "not found",
        "set_env.sh": str(set_env) if set_env else "not found",
        "pyACL (import acl)": "ok" if acl_ok else acl_why,
    }
    table = format_table(["check", "result"], list(facts.items()), title="ascend_lab doctor")
    print(table)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.set_tags({"doctor.atc": facts["atc"], "doctor.acl": facts["pyACL (import acl)"],
                          "doctor.npu_smi": facts["npu-smi"]})
    ctx.tracker.log_text(table + "\n", "doctor.txt")
    return metrics
