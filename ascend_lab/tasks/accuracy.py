"""task=accuracy: one candidate against one reference over the same prompts, with a gate
(:mod:`ascend_lab.accuracy_measure`).

What it records (:mod:`ascend_lab.accuracy.report`): the per-prompt table (printed, csv, md), the per-step
figures and their plot, the aggregate metrics and the gate's verdict (:mod:`ascend_lab.accuracy.gate`).
When the gate fails (or ``accuracy.layer_report=always``) it runs the layer report, naming the first decoder
layer whose hidden state drifts past the precision's tolerance. A failed gate raises
:class:`~ascend_lab.accuracy.gate.AccuracyGateError` only after all of that is logged: exit status 1, the
run FAILED, and under ``-m`` the sweep counts it.
"""

from __future__ import annotations

import logging

from ascend_lab.accuracy import report
from ascend_lab.accuracy.gate import GATE_METRIC, Verdict
from ascend_lab.accuracy_measure import layer_report, measure
from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.errors import AscendLabError

log = logging.getLogger(__name__)

OUTPUT_FOLDER = "accuracy"  # in the job's output folder, and the run's artifact folder


def run(cfg: AppConfig, ctx: JobContext) -> Verdict:
    acc = cfg.accuracy
    # The run's identity for sweep summaries (a bench job measuring its accuracy keeps its own).
    ctx.tracker.set_tags({"model": cfg.model.name, "scenario": "accuracy", "batch_size": 1})
    measured = measure(cfg, ctx)
    out_dir = ctx.output_dir / OUTPUT_FOLDER
    title = (f"accuracy: {cfg.model.name}, {measured.candidate_text} against {measured.reference_text}, "
             f"{len(measured.prompts)} prompts × {acc.new_tokens} tokens")
    verdict = measured.verdict
    print(report.write_comparison(measured.comparison, out_dir, title, verdict.line()))
    report.log_comparison(ctx.tracker, measured.comparison)
    ctx.tracker.log_metrics({GATE_METRIC: float(verdict.passed)})
    ctx.tracker.set_tags({"accuracy.gate": verdict.line()})
    print(verdict.line())

    if acc.layer_report == "always" or (acc.layer_report == "on_failure" and not verdict.passed):
        try:
            drift = layer_report(ctx, measured.candidate_cfg, measured.reference_cfg, measured.reference_ctx,
                                 measured.prompts, acc.gate[measured.precision].layer_tolerance)
        except AscendLabError as exc:
            if verdict.passed:
                raise
            # The gate's verdict is the run's outcome; a layer report that cannot run does not hide it.
            log.warning("the layer report could not run: %s", exc)
            ctx.tracker.set_tags({"layer_report.error": str(exc)})
        else:
            print(report.write_layers(drift, out_dir, f"layer report: {cfg.model.name}, {measured.candidate_text} "
                                                      f"against {measured.reference_text}, prefill of "
                                                      f"{len(measured.prompts)} prompts"))
            report.log_layers(ctx.tracker, drift)
    ctx.tracker.log_artifact(out_dir, OUTPUT_FOLDER)
    verdict.raise_if_failed()
    return verdict
