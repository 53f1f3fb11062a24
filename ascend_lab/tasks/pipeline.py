"""task=pipeline (the default): the walkthrough end to end, one nested run per stage.

doctor → export → compile (only where ``atc`` exists, for each of ``benchmark.batch_sizes``: the
kv_cache graph's batch is static; otherwise the compile run records ``compile_skipped`` with the
reason) → task=bench at each of ``benchmark.batch_sizes`` → the summary table, with its
csv/markdown/plot logged on the pipeline run (and kept in the job's output folder, so it works with
``tracking=off`` too).

Each stage run logs the params of the task it does (``ctx.params_for``: the groups that task reads,
with the stage's own ``benchmark.batch_size``), so MLflow's compare view of the bench stages plots
batch size against throughput.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from ascend_lab.cann import toolkit as cann_toolkit
from ascend_lab.bench.summary import publish
from ascend_lab.config import AppConfig, Task
from ascend_lab.context import JobContext
from ascend_lab.tracking.run_names import stage_name

log = logging.getLogger(__name__)


def _stage(ctx: JobContext, tracker, cfg: AppConfig | None = None) -> JobContext:
    return dataclasses.replace(ctx, tracker=tracker, cfg=cfg or ctx.cfg)


def _with_batch(cfg: AppConfig, batch_size: int) -> AppConfig:
    return dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, batch_size=batch_size))


def run(cfg: AppConfig, ctx: JobContext) -> list:
    from ascend_lab.compile import ensure_compiled
    from ascend_lab.export import ensure_exported
    from ascend_lab.tasks import bench, doctor

    _ = ctx.device  # resolved once, here; every stage's context copy shares it
    with ctx.tracker.child("doctor", {"stage": "doctor"}, ctx.params_for(cfg, Task.doctor)) as tracker:
        doctor.run(cfg, _stage(ctx, tracker))
    with ctx.tracker.child("export", {"stage": "export"}, ctx.params_for(cfg, Task.export)) as tracker:
        ensure_exported(cfg, _stage(ctx, tracker))
    with ctx.tracker.child("compile", {"stage": "compile"}, ctx.params_for(cfg, Task.compile)) as tracker:
        compiled = None
        if cann_toolkit.find_atc(cfg.atc.toolkit_home) or cann_toolkit.find_set_env(cfg.atc.toolkit_home):
            # ATC compiles the graph exported in atc.export_dtype, once per batch size (static batch).
            for_atc = ensure_exported(cfg, _stage(ctx, tracker), dtype=cfg.atc.export_dtype)
            for batch_size in cfg.benchmark.batch_sizes:
                compiled = ensure_compiled(_with_batch(cfg, batch_size), _stage(ctx, tracker), for_atc)
            skipped = "dry run (atc.dry_run=true)" if cfg.atc.dry_run else "atc not found after loading set_env.sh"
        else:
            skipped = "atc not found (no CANN toolkit on PATH or under " \
                      + ", ".join(str(p.parent) for p in cann_toolkit.set_env_locations(cfg.atc.toolkit_home)) + ")"
        if compiled is None:
            tracker.set_tags({"compile_skipped": skipped})
            ctx.tracker.set_tags({"compile_skipped": skipped})
            print(f"compile skipped: {skipped}")
        else:
            print(f"compiled: {compiled.om_path}")
    rows = []
    for batch_size in cfg.benchmark.batch_sizes:
        stage_cfg = _with_batch(cfg, batch_size)
        with ctx.tracker.child(stage_name("bench", {"benchmark.batch_size": batch_size}), {"stage": "bench"},
                               ctx.params_for(stage_cfg, Task.bench)) as tracker:
            rows.append(bench.run(stage_cfg, _stage(ctx, tracker, stage_cfg)))
    title = f"ascend_lab pipeline: {cfg.model.name}, {cfg.benchmark.scenario}, runtime {rows[0].runtime}"
    publish(ctx.tracker, rows, out_dir=ctx.output_dir, title=title)
    seconds = time.time() - ctx.started_at  # wall time from the program's start, as a stopwatch reads it
    ctx.tracker.log_metrics({"pipeline_seconds": seconds})
    print(f"pipeline finished in {seconds:.1f} s; summary files in {ctx.output_dir}")
    hint = ctx.browse_hint()
    if hint:
        print(hint)
    return rows
