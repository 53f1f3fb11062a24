"""A bench job's accuracy figures next to its speed (``search.accuracy``): what a tuning sweep ranks by besides speed.

A faster ATC setting (precision mode, implementation mode, keep_dtype, fusion switches, AOE) or runtime setting is
only worth having if the model still computes the same thing. So each job of such a sweep measures, after its timed
pass, the configuration it benchmarked against task=accuracy's reference (``accuracy.reference_*``: float32 PyTorch
on the CPU by default) over ``accuracy.prompts`` × ``accuracy.new_tokens`` greedy tokens (32 by default):

- ``tf_top1_agreement_mean``: greedy agreement with the reference (teacher-forced: every step sees the reference's
  context), ``fr_common_prefix_mean`` the free-running tokens generated alike;
- ``tf_max_abs_diff_max``: the largest |Δ| of any logit at any step;
- ``accuracy_gate_passed``: task=accuracy's gate for the job's precision (``accuracy.gate.<precision>``).

Everything is task=accuracy's own code (:mod:`ascend_lab.accuracy_measure`): the sides'
configs, the planning and opening of each side, the decoding, the metric definitions, the thresholds. This module
only runs it inside a bench job, without the layer report and without failing the job: a setting that fails the gate
is recorded (0) and the sweep's summary ranks it last (:mod:`ascend_lab.bench.summary`).
"""

from __future__ import annotations

from ascend_lab.config import AppConfig

# Records of the two sides' planning (export, compile) go under these prefixes, apart from the bench job's own.
REFERENCE_PREFIX, CANDIDATE_PREFIX = "accuracy.reference.", "accuracy.candidate."


def measure_accuracy(cfg: AppConfig, ctx) -> dict[str, float]:
    """The job's configuration (at batch 1, each prompt alone) against the reference; logs and returns the figures."""
    from ascend_lab.accuracy_measure import measure

    measured = measure(cfg, ctx, candidate_prefix=CANDIDATE_PREFIX, reference_prefix=REFERENCE_PREFIX)
    figures = measured.aggregate
    ctx.tracker.log_metrics(figures)
    ctx.tracker.set_tags({"accuracy.gate": measured.verdict.line()})
    print(f"accuracy against {measured.reference_text} ({len(measured.prompts)} prompts × "
          f"{cfg.accuracy.new_tokens} tokens): greedy agreement {figures['tf_top1_agreement_mean']:.1%}, "
          f"max |Δ| logits {figures['tf_max_abs_diff_max']:.4g}\n{measured.verdict.line()}")
    return figures
