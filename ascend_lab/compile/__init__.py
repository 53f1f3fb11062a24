"""Compiling the exported ONNX graph into an Ascend offline model (.om) with CANN's ATC.

The modules, each usable alone:

- :mod:`~ascend_lab.compile.shapes` — graph inputs + config → ``--input_shape`` and gears (pure);
- :mod:`~ascend_lab.compile.command` — → the ATC argv and the cache key (pure);
- :mod:`~ascend_lab.compile.opcheck` — is every node one ATC's ONNX parser takes (before atc runs);
- :mod:`~ascend_lab.compile.runner` — the subprocess and its outcome;
- here: :func:`ensure_compiled`, the checked, cached, tracked compile that tasks call. The ``.om`` is an
  entry of the one content-addressed cache (:mod:`ascend_lab.artifact_cache`): its per-key lock means
  two sweep jobs asking for the same compile run ATC once.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shlex
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ascend_lab import artifact_cache
from ascend_lab.cann import npu_smi, toolkit
from ascend_lab.compile import aoe, opcheck, workdir
from ascend_lab.compile.aoe import aoe_command
from ascend_lab.compile.command import build_atc_command, cache_key
from ascend_lab.compile.runner import AtcError, check_result, run_atc
from ascend_lab.compile.shapes import InputShapes, derive_input_shapes, read_graph_inputs
from ascend_lab.compile.switches import switch_files
from ascend_lab.errors import AscendLabError, ToolchainError

if TYPE_CHECKING:
    from ascend_lab.config import AppConfig
    from ascend_lab.export import ExportedModel

log = logging.getLogger(__name__)

HISTOGRAM_ARTIFACT = "atc_op_histogram.csv"


class OpCheckError(AscendLabError):
    """The graph has nodes ATC's ONNX parser does not take; atc was not called."""


@dataclass
class CompiledModel:
    om_path: Path
    sha256: str
    onnx_sha256: str
    soc_version: str
    dynamic_mode: str
    batch_gears: list[int] | None
    dims_gears: list[list[int]] | None = None
    input_shape: str = ""
    cache_hit: bool = False
    compile_seconds: float | None = None
    argv: list[str] = field(default_factory=list)


@dataclass
class CompilePlan:
    """Everything about a compile that is known before ATC runs."""

    onnx_path: Path
    onnx_sha256: str
    shapes: InputShapes
    folder: Path  # the cache entry for these inputs
    stem: str  # the .om name without suffix
    argv: list[str]  # the command as it names the cache entry
    key: str
    switches: dict[str, Path] = field(default_factory=dict)  # --keep_dtype / --fusion_switch_file files

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)


def plan_compile(cfg: "AppConfig", output_root: Path, exported: "ExportedModel") -> CompilePlan:
    """The shapes, command and cache entry for compiling ``exported`` under ``cfg.atc``."""
    atc_cfg = cfg.atc
    graph_inputs = read_graph_inputs(exported.onnx_path, exported.dynamic_axes)
    shapes = derive_input_shapes(graph_inputs, atc_cfg, cfg.benchmark, cfg.export)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{cfg.model.name}_{exported.graph}")
    switches = switch_files(atc_cfg, output_root)  # atc.keep_dtype / atc.fusion_switch_off as the files ATC reads
    probe = build_atc_command(atc_cfg, exported.onnx_path, shapes, stem, switches)
    key = cache_key(exported.sha256, probe, toolkit.toolkit_version(atc_cfg.toolkit_home), atc_cfg.tuning)
    folder = output_root / f"{stem}_{atc_cfg.soc_version}_{key[:16]}"
    argv = build_atc_command(atc_cfg, exported.onnx_path, shapes, folder / stem, switches)
    return CompilePlan(Path(exported.onnx_path), exported.sha256, shapes, folder, stem, argv, key, switches)


def check_ops(cfg: "AppConfig", tracker, onnx_path: Path) -> opcheck.OpCheck:
    """Check the graph's ops against ATC's ONNX operator pages; log the op histogram; refuse (no atc call)
    unless every node passes or ``atc.skip_op_check`` is set."""
    result = opcheck.check_graph(onnx_path, cfg.atc.precision_mode, cfg.atc.precision_mode_v2,
                                 static_shapes=cfg.atc.dynamic_mode != "shape_range")
    rows = result.histogram_rows()
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["op"])
    writer.writeheader()
    writer.writerows(rows)
    tracker.log_text(out.getvalue(), HISTOGRAM_ARTIFACT)
    tracker.log_metrics({"atc_op_check_offenders": result.refused_nodes, "onnx_nodes": sum(result.histogram.values())})
    tracker.set_tags({"onnx_opset": str(result.opset)})
    if result.ok:
        print(f"ATC op check: opset {result.opset}, {sum(result.histogram.values())} nodes of "
              f"{len(result.histogram)} op types, every one in ascend_lab/compile/{opcheck.TABLE_FILE.name} at "
              f"that opset (precision {result.precision})", flush=True)
        return result
    foreign = any(o.problem == "domain" for o in result.offenders)
    fitting = result.fitting_opset() if any(o.problem == "opset" for o in result.offenders) else None
    advice = [
        f"export at an opset ATC parses every op at: export.opset={fitting}" if fitting else None,
        "use another export.graph (export.graph=kv_cache is made for ATC)",
        "drop export.quantize (its int8/int4 ops are onnxruntime's own, com.microsoft domain)" if foreign else None,
        "for int8/int4 on the NPU, quantise with Ascend's own AMCT instead of export.quantize",
        "export in float16 (atc.export_dtype=float16: ATC's MatMul takes float16 only)"
        if any(o.dtype == "float" for o in result.offenders) else None,
        "or, if you know this CANN takes them, atc.skip_op_check=true",
    ]
    message = (f"The graph {onnx_path} has {result.refused_nodes} nodes ATC's ONNX parser does not take "
               f"(checked against ascend_lab/compile/{opcheck.TABLE_FILE.name}, under precision {result.precision}); "
               f"atc was not run.\n{result.summary()}\nWhat to do: " + "; ".join(a for a in advice if a) + ".\n"
               f"The op histogram is logged as {HISTOGRAM_ARTIFACT}.")
    if cfg.atc.skip_op_check:
        log.warning("atc.skip_op_check=true: compiling anyway. %s", message)
        tracker.set_tags({"atc_op_check": f"skipped with {result.refused_nodes} offending nodes"})
        return result
    tracker.set_tags({"atc_op_check": f"failed: {result.refused_nodes} offending nodes"})
    raise OpCheckError(message)


def ensure_compiled(cfg: "AppConfig", ctx, exported: "ExportedModel", *, required: bool = False,
                    plan: CompilePlan | None = None) -> CompiledModel | None:
    """The .om for ``exported``: reused from the cache, or op-checked and compiled with ATC.

    Returns None (tag ``compile_skipped`` says why) on a dry run, and when no ``atc`` exists unless
    ``required``, in which case that is a :class:`ToolchainError` naming where it looked.
    """
    atc_cfg, tracker = cfg.atc, ctx.tracker
    plan = plan or plan_compile(cfg, ctx.path(atc_cfg.output_dir), exported)
    tracker.set_tags({"onnx_sha256": plan.onnx_sha256, "atc_command": plan.command_line, "atc.cache_key": plan.key,
                      "atc.tuning": atc_cfg.tuning, "atc.cache_layout": getattr(exported, "cache_layout", "rank5")})

    if atc_cfg.dry_run:
        check_ops(cfg, tracker, plan.onnx_path)
        text = f"{plan.command_line}\n\n{toolkit.locate('atc', atc_cfg.toolkit_home).describe(sourced=False)}\n"
        if atc_cfg.tuning != "none":  # AOE runs first, in the cache entry (ascend_lab.compile.aoe)
            text = (shlex.join(aoe_command("aoe", plan.argv, atc_cfg.tuning, plan.folder / aoe.WORK_FOLDER / plan.stem))
                    + "\n" + text)
        print("ATC dry run (atc.dry_run=true), not executed:\n" + text)
        tracker.log_text(text, "atc_command.txt")
        tracker.set_tags({"compile_skipped": "dry run (atc.dry_run=true)"})
        return None

    meta = artifact_cache.read_meta(plan.folder)
    if meta is not None and artifact_cache.damage(plan.folder, meta) is None:
        return _cached(plan, meta, tracker, atc_cfg)

    check_ops(cfg, tracker, plan.onnx_path)
    environment = toolkit.load_environment("atc", atc_cfg.toolkit_home)
    if environment.path is None:
        message = toolkit.missing_toolkit_message("atc (task=compile)", atc_cfg.toolkit_home)
        if required:
            raise ToolchainError(message)
        log.warning("skipping the ATC compile: %s", message)
        tracker.set_tags({"compile_skipped": message})
        return None

    aoe_environment = None
    if atc_cfg.tuning != "none":
        aoe_environment = toolkit.load_environment("aoe", atc_cfg.toolkit_home)
        if aoe_environment.path is None:
            raise ToolchainError(toolkit.missing_toolkit_message(
                f"aoe (atc.tuning={atc_cfg.tuning}; or atc.tuning=none to compile untuned)", atc_cfg.toolkit_home))

    log_path = ctx.output_dir / "atc.log"
    ran: dict = {}

    def build(staging: Path) -> dict:
        argv = [str(environment.path),
                *build_atc_command(atc_cfg, plan.onnx_path, plan.shapes, staging / plan.stem, plan.switches)[1:]]
        env = environment.env
        if aoe_environment is not None:  # AOE first; atc then reads the knowledge base it wrote (TUNE_BANK_PATH)
            report = tune(cfg, ctx, aoe_environment, argv, staging, plan.stem)
            ran["aoe"] = report.summary()
            env = aoe.tuning_environment(environment.env or dict(os.environ), staging)
        tracker.log_text(f"{shlex.join(argv)}\n\n{environment.describe(sourced=True)}\n", "atc_command.txt")
        work_dir = ctx.output_dir / workdir.WORK_FOLDER  # this job's: fusion_result.json, kernel_meta/, plog
        work_dir.mkdir(parents=True, exist_ok=True)
        env, chosen = workdir.atc_environment(env or os.environ, work_dir, _npu_count())
        tracker.set_tags({f"atc.env.{k}": v for k, v in chosen.items()})
        print(f"ATC: {shlex.join(argv)}" + "".join(f"\n  {k}={v}" for k, v in chosen.items()), flush=True)
        result = run_atc(argv, env, atc_cfg.timeout_s, log_path, cwd=work_dir)
        ran["result"] = result
        tracker.log_artifact(log_path)
        try:
            om = check_result(result, staging / plan.stem, atc_cfg.timeout_s)
        except AtcError as exc:
            raise AtcError(f"{exc}\n{workdir.failure_hint(env, work_dir)}") from None
        shutil.copy2(log_path, staging / "atc.log")
        return {"files": [om.name], "om": om.name, "om_bytes": om.stat().st_size, "onnx_sha256": plan.onnx_sha256,
                "onnx_path": str(plan.onnx_path), "argv": plan.argv, "compile_seconds": result.seconds,
                "soc_version": atc_cfg.soc_version, "dynamic_mode": plan.shapes.mode,
                "input_shape": plan.shapes.input_shape, "batch_gears": plan.shapes.batch_gears,
                "dims_gears": plan.shapes.dims_gears, "cache_key": plan.key, "atc": str(environment.path),
                "set_env": str(environment.set_env) if environment.set_env else None,
                "tuning": atc_cfg.tuning, "aoe": ran.get("aoe")}

    entry = artifact_cache.ensure(plan.folder, build)
    if "result" not in ran:  # another job compiled it while this one waited on the lock
        return _cached(plan, entry.meta, tracker, atc_cfg)
    compiled = _compiled(plan, entry.meta, hit=False)
    _record(tracker, compiled, atc_cfg)
    return compiled


def _npu_count() -> int:
    """NPUs on this host (TE_PARALLEL_COMPILER's rule divides the cores among them); 1 where npu-smi says none."""
    try:
        return max(len(npu_smi.npu_smi_overview().chips), 1)
    except Exception:  # noqa: BLE001 - a host without npu-smi compiles for one processor
        return 1


def tune(cfg: "AppConfig", ctx, environment: toolkit.CannEnvironment, atc_argv: list[str], staging: Path,
         stem: str) -> aoe.AoeReport:
    """Run AOE on the compile's model and options (``atc.tuning``), in the staging cache entry; log its report."""
    atc_cfg, tracker = cfg.atc, ctx.tracker
    argv = aoe_command(environment.path, atc_argv, atc_cfg.tuning, staging / aoe.WORK_FOLDER / stem)
    print(f"AOE ({atc_cfg.tuning} tuning): {shlex.join(argv)}", flush=True)
    log_path = ctx.output_dir / "aoe.log"
    try:
        report = aoe.run_aoe(argv, aoe.tuning_environment(environment.env or dict(os.environ), staging), staging,
                             atc_cfg.tuning_timeout_s, log_path)
    finally:
        if log_path.is_file():
            tracker.log_artifact(log_path)
    for path in report.results:
        tracker.log_artifact(path, "aoe")
    tracker.log_dict(report.summary(), "aoe_report.json")
    tracker.log_metrics({"aoe_seconds": report.seconds,
                         **({"aoe_improvement_pct": report.improvement_pct} if report.improvement_pct is not None
                            else {})})
    print(f"AOE finished in {report.seconds:.1f} s"
          + (f", performance improved by {report.improvement_pct:g} %" if report.improvement_pct is not None else "")
          + f"; report: {', '.join(p.name for p in report.results) or 'no result file'}", flush=True)
    return report


def _cached(plan: CompilePlan, meta: dict, tracker, atc_cfg) -> CompiledModel:
    compiled = _compiled(plan, meta, hit=True)
    log.info("compile cache hit: %s", compiled.om_path)
    tracker.log_text(f"{plan.command_line}\n\n(cache hit: {compiled.om_path})\n", "atc_command.txt")
    if (plan.folder / "atc.log").is_file():  # the log of the compile that made this .om
        tracker.log_artifact(plan.folder / "atc.log")
    _record(tracker, compiled, atc_cfg)
    return compiled


def _compiled(plan: CompilePlan, meta: dict, hit: bool) -> CompiledModel:
    return CompiledModel(om_path=plan.folder / meta["om"], sha256=meta["sha256"], onnx_sha256=meta["onnx_sha256"],
                         soc_version=meta["soc_version"], dynamic_mode=meta["dynamic_mode"],
                         batch_gears=meta["batch_gears"], dims_gears=meta["dims_gears"],
                         input_shape=meta["input_shape"], cache_hit=hit, compile_seconds=meta["compile_seconds"],
                         argv=meta["argv"])


def _record(tracker, compiled: CompiledModel, atc_cfg) -> None:
    # On a cache hit compile_seconds is the original compile's time; compile_cache_hit tells them apart.
    tracker.log_metrics({"compile_seconds": compiled.compile_seconds, "compile_cache_hit": float(compiled.cache_hit),
                         "om_size_mb": compiled.om_path.stat().st_size / 2**20})
    tracker.set_tags({"om_sha256": compiled.sha256, "onnx_sha256": compiled.onnx_sha256,
                      "om_path": str(compiled.om_path), "atc.input_shape": compiled.input_shape})
    tracker.log_dict({k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(compiled).items()}, "compile.json")
    if atc_cfg.log_om:
        tracker.log_artifact(compiled.om_path, "om")


__all__ = ["AtcError", "CompilePlan", "CompiledModel", "OpCheckError", "check_ops", "ensure_compiled", "plan_compile"]
