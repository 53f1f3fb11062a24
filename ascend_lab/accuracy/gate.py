"""The gate: a candidate's teacher-forced figures against the thresholds of its precision.

Three checks, each a run metric against one ``accuracy.gate.<precision>.*`` key:

- ``tf_cosine_min`` ≥ ``min_cosine``: the worst step's logits direction;
- ``tf_top1_agreement_mean`` ≥ ``min_top1_agreement``: the share of steps picking the reference's token;
- ``tf_kl_mean`` ≤ ``max_mean_kl``: how much next-token probability mass moves, on average.

A NaN figure (a non-finite candidate) fails its check. :class:`AccuracyGateError` is raised by the task
only after everything measured is logged; its message is one line naming each failed metric, its value
and its threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from ascend_lab.errors import AscendLabError

# The run metric that records the verdict (1 passed, 0 failed); the sweep summary reads it.
GATE_METRIC = "accuracy_gate_passed"
# (metric, threshold field, ">=" or "<=")
CHECKS = (
    ("tf_cosine_min", "min_cosine", ">="),
    ("tf_top1_agreement_mean", "min_top1_agreement", ">="),
    ("tf_kl_mean", "max_mean_kl", "<="),
)


class AccuracyGateError(AscendLabError):
    """The candidate is outside the accuracy thresholds of its precision."""


@dataclass(frozen=True)
class Check:
    metric: str
    value: float
    key: str  # the threshold's config key
    threshold: float
    op: str  # ">=" or "<="

    @property
    def passed(self) -> bool:
        # Written so that NaN fails: every comparison with NaN is false.
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold

    def describe(self) -> str:
        relation = self.op if self.passed else {">=": "<", "<=": ">"}[self.op]
        return f"{self.metric} = {self.value:.10g} {relation} {self.threshold:g} ({self.key})"


@dataclass(frozen=True)
class Verdict:
    precision: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def line(self) -> str:
        """One line: the verdict, and the failed checks (or every check when it passed)."""
        if self.passed:
            return (f"accuracy gate passed ({self.precision} thresholds): "
                    + "; ".join(c.describe() for c in self.checks))
        return f"accuracy gate FAILED ({self.precision} thresholds): " + "; ".join(c.describe() for c in self.failed)

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise AccuracyGateError(self.line())


def evaluate(aggregate: dict[str, float], thresholds, precision: str) -> Verdict:
    """The verdict on ``aggregate`` (:meth:`Comparison.aggregate`) under ``thresholds`` (a GateThresholds)."""
    key = f"accuracy.gate.{precision}"
    return Verdict(precision, tuple(Check(metric, aggregate[metric], f"{key}.{name}", getattr(thresholds, name), op)
                                    for metric, name, op in CHECKS))
