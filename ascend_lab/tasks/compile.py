"""task=compile: the exported ONNX graph → an Ascend .om with CANN's ATC (or, with
``atc.dry_run=true``, the exact command line and environment that would be used)."""

from __future__ import annotations

from ascend_lab.compile import ensure_compiled, plan_compile
from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.report import format_table


def run(cfg: AppConfig, ctx: JobContext) -> dict:
    from ascend_lab.export import ensure_exported

    exported = ensure_exported(cfg, ctx, dtype=cfg.atc.export_dtype)
    # Without atc this raises the clear "CANN is not installed" error instead of skipping.
    plan = plan_compile(cfg, ctx.path(cfg.atc.output_dir), exported)
    compiled = ensure_compiled(cfg, ctx, exported, required=True, plan=plan)
    shapes = plan.shapes
    gears = shapes.batch_gears or (";".join(",".join(map(str, g)) for g in shapes.dims_gears)
                                   if shapes.dims_gears else None)
    rows = [
        ("graph", f"{exported.graph} ({exported.dtype})"),
        ("onnx", exported.onnx_path),
        ("onnx sha256", exported.sha256[:16]),
        ("soc_version", cfg.atc.soc_version),
        ("dynamic mode", shapes.mode),
        ("input_shape", shapes.input_shape),
        ("gears", gears),
    ]
    if compiled is None:
        rows.append(("result", "dry run: not executed (atc.dry_run=true)"))
    else:
        rows += [
            (".om", compiled.om_path),
            (".om sha256", compiled.sha256[:16]),
            ("cache hit", compiled.cache_hit),
            ("compile seconds", compiled.compile_seconds),
        ]
    table = format_table(["compile", "value"], rows, title="ascend_lab compile")
    print(table)
    ctx.tracker.log_text(table + "\n", "compile.txt")
    return {"om_path": str(compiled.om_path) if compiled else None, "command": plan.argv,
            "cache_hit": compiled.cache_hit if compiled else None}
