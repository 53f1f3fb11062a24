"""task=doctor: is this machine ready? The walkthrough's environment check, made complete.

Versions (torch, torch_npu, CANN), the resolved device with count, index and name, a matmul timed
on the device and on the CPU (warm-up, repeats, synchronised), device memory, and the Ascend
toolchain (npu-smi, atc, pyACL, toolkit version). Then:

- the torch ↔ torch_npu ↔ CANN pairing against Ascend's published table (a warning naming the versions
  that match when it is off; :mod:`ascend_lab.telemetry.pairing`);
- where npu-smi exists, its board table: per chip health, power, temperature and HBM in use;
- with ``doctor.compare_to=<run id or environment.json>``, what differs between this host's environment and
  that one, by group, the fields known to change results marked, logged as ``environment_diff.json`` /
  ``.txt`` (:mod:`ascend_lab.telemetry.environment`). The reference is read before any work, so a wrong one
  fails at once.
"""

from __future__ import annotations

import logging

from ascend_lab.cann import npu_smi as cann_npu_smi, toolkit as cann_toolkit
from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.device import HostTimer, measure
from ascend_lab.provenance import installed_version
from ascend_lab.report import format_number, format_table
from ascend_lab.stats import summarize
from ascend_lab.telemetry import environment
from ascend_lab.telemetry.pairing import check_pairing

log = logging.getLogger(__name__)


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


def board_table(overview: cann_npu_smi.NpuSmiOverview) -> str | None:
    """npu-smi's chips as a table (None without npu-smi): health, power, temperature, HBM (else memory) in use."""
    if overview.path is None:
        return None
    if overview.error:
        return f"npu-smi board: {overview.error}"

    def used(a, b) -> str:
        return "-" if a is None else f"{a:,.0f} / {b:,.0f}" if b else f"{a:,.0f}"

    rows = [(f"{c.npu_id}/{c.chip_id}", c.name, c.health, format_number(c.power_w), format_number(c.temp_c),
             used(c.hbm_used_mb, c.hbm_total_mb) if c.hbm_used_mb is not None else used(c.memory_used_mb,
                                                                                        c.memory_total_mb))
            for c in overview.chips]
    title = f"npu-smi board (driver {overview.driver_version or 'unknown'})"
    return format_table(["npu/chip", "name", "health", "power (W)", "temp (C)", "HBM in use (MB)"], rows, title=title)


def _reference(cfg: AppConfig, ctx: JobContext) -> tuple[dict, str] | None:
    """The environment doctor.compare_to names (read first: a wrong one fails before any work)."""
    if cfg.doctor.compare_to is None:
        return None
    from ascend_lab.tracking import resolve_uri

    uri = ctx.store.uri if ctx.store is not None else resolve_uri(cfg.tracking.uri, ctx.launch_dir)
    value = str(cfg.doctor.compare_to)
    return environment.load_reference(value, ctx.path(value), uri)


def compare_environment(cfg: AppConfig, ctx: JobContext, reference: tuple[dict, str]) -> list:
    """Print and log what differs between this host's environment and ``reference``."""
    snapshot, described = reference
    here = environment.environment_snapshot(ctx.launch_dir, cfg.atc.toolkit_home)
    differences = environment.diff_snapshots(here, snapshot)
    text = environment.diff_text(differences, described)
    print(text, end="")
    record = environment.diff_record(differences, described)
    ctx.tracker.log_dict(record, environment.DIFF_ARTIFACTS[0])
    ctx.tracker.log_text(text, environment.DIFF_ARTIFACTS[1])
    ctx.tracker.set_tags({"doctor.compare_to": described, "doctor.environment_differences": len(differences),
                          "doctor.result_changing_differences": sum(d.changes_results for d in differences)})
    return differences


def run(cfg: AppConfig, ctx: JobContext) -> dict:
    import torch

    reference = _reference(cfg, ctx)
    device = ctx.device
    doc = cfg.doctor
    smi = cann_npu_smi.query_npu_smi()
    atc_path = cann_toolkit.find_atc(cfg.atc.toolkit_home)
    acl_ok, acl_why = cann_toolkit.acl_importable()
    set_env = cann_toolkit.find_set_env(cfg.atc.toolkit_home)

    device_ms = time_matmul(device, doc.matmul_size, doc.matmul_dtype, doc.warmup, doc.repeats, on_cpu=False)
    # A speedup is a comparison with an accelerator: on the CPU it would compare the CPU with itself (noise).
    cpu_ms = (time_matmul(device, doc.matmul_size, doc.matmul_dtype, doc.warmup, doc.repeats, on_cpu=True)
              if device.is_accelerator else device_ms)
    memory = device.memory()

    metrics = {
        "matmul_ms_device": device_ms,
        "matmul_ms_cpu": cpu_ms,
        "matmul_tflops_device": 2 * doc.matmul_size ** 3 / (device_ms * 1e-3) / 1e12,
        "device_mem_reserved_mb": memory.reserved_mb,
        "device_mem_allocated_mb": memory.allocated_mb,
        "device_count": device.count(),
    }
    if device.is_accelerator:
        metrics["matmul_speedup"] = cpu_ms / device_ms if device_ms > 0 else float("nan")
    matmul = f"matmul {doc.matmul_size}² {doc.matmul_dtype}"
    timings = ({f"{matmul} on device (ms)": device_ms, f"{matmul} on CPU (ms)": cpu_ms,
                "speedup (CPU / device)": metrics["matmul_speedup"]} if device.is_accelerator
               else {f"{matmul} on CPU (ms)": cpu_ms, "speedup (CPU / device)": "- (no accelerator to compare)"})
    facts = {
        "torch": torch.__version__,
        "torch_npu": installed_version("torch_npu"),
        "CANN toolkit": cann_toolkit.toolkit_version(cfg.atc.toolkit_home) or "not installed",
        "device": str(device.torch_device),
        "chosen because": device.reason,
        "device count": device.count(),
        "current index": device.index if device.is_accelerator else "-",
        "device name": device.name(),
        **timings,
        "device memory reserved (MB)": memory.reserved_mb,
        "npu-smi": str(smi.path) if smi.path else "not found",
        "npu-smi chips": ", ".join(smi.names) or "-",
        "suggested atc.soc_version": "{} (from {})".format(*cann_npu_smi.detected_soc_version()) if smi.path or acl_ok
        else "-",
        "atc": str(atc_path) if atc_path else "not found",
        "set_env.sh": str(set_env) if set_env else "not found",
        "pyACL (import acl)": "ok" if acl_ok else acl_why,
    }
    pairing = check_pairing(torch.__version__, facts["torch_npu"], cann_toolkit.toolkit_version(cfg.atc.toolkit_home))
    facts["torch ↔ torch_npu ↔ CANN"] = f"{pairing.status}: {pairing.message}"
    table = format_table(["check", "result"], list(facts.items()), title="ascend_lab doctor")
    board = board_table(cann_npu_smi.npu_smi_overview())
    if board:
        table += "\n" + board
    print(table)
    if not pairing.ok:
        log.warning("torch ↔ torch_npu ↔ CANN pairing: %s", pairing.message)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.set_tags({"doctor.atc": facts["atc"], "doctor.acl": facts["pyACL (import acl)"],
                          "doctor.npu_smi": facts["npu-smi"], "doctor.pairing": pairing.status})
    ctx.tracker.log_text(table + "\n", "doctor.txt")
    if reference is not None:
        compare_environment(cfg, ctx, reference)
    return metrics
