"""`search` group: what a tuning sweep's jobs measure besides speed, and what an automatic search optimises.

Two switches, both off by default and set by the tuning presets:

- ``accuracy``: after the timed pass, task=bench measures how far this job's configuration (its runtime,
  compiled model, precision) is from the reference that ``accuracy.*`` describes, over ``accuracy.prompts`` ×
  ``accuracy.new_tokens`` greedy tokens, with task=accuracy's own metrics and gate
  (:mod:`ascend_lab.accuracy`). A sweep over ATC settings then shows each setting's accuracy next to its speed,
  and a fast setting that fails the gate is marked and ranked last (``conf/experiment/atc_tuning.yaml``).
- ``objective``: the job returns ``metric`` as one number, which is what Hydra's Optuna sweeper maximises
  (``conf/hparams_search/*.yaml``); a job whose p99 TPOT exceeds ``max_tpot_p99_ms`` returns
  ``infeasible_value`` instead, so the sampler learns to avoid that region (:mod:`ascend_lab.tuning.objective`).

Neither changes a measured figure, so this group is not part of a job's identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ascend_lab.errors import require, require_choice

# Figures an automatic search may maximise (higher is better for each): task=bench's metric names.
OBJECTIVE_METRICS = ("decode_tokens_s", "throughput_tokens_s", "prefill_tokens_s", "throughput_samples_s")


@dataclass
class SearchConfig:
    group: ClassVar[str] = "search"

    accuracy: bool = field(default=False, metadata={
        "help": "task=bench: after the timed pass, measure this configuration's accuracy against accuracy.reference_* "
                "(greedy agreement over accuracy.new_tokens tokens, max |Δ| of the logits, the accuracy gate of its "
                "precision) and log it beside the speed (tf_*, fr_*, accuracy_gate_passed)."})
    objective: bool = field(default=False, metadata={
        "help": "Return search.metric as the job's value (what Hydra's Optuna sweeper maximises); set by "
                "conf/hparams_search/*.yaml."})
    metric: str = field(default="decode_tokens_s", metadata={
        "help": "The figure the search maximises: " + ", ".join(OBJECTIVE_METRICS) + "."})
    max_tpot_p99_ms: Optional[float] = field(default=None, metadata={
        "help": "The constraint: a job whose p99 time per output token (tpot_ms_p99) exceeds this many ms is "
                "infeasible and returns search.infeasible_value; null: no constraint."})
    infeasible_value: float = field(default=0.0, metadata={
        "help": "What an infeasible job (or one without the metric) returns: below every feasible tokens/s, so the "
                "sampler ranks it last and steers away from it."})

    def __post_init__(self) -> None:
        require_choice("search.metric", self.metric, OBJECTIVE_METRICS)
        if self.max_tpot_p99_ms is not None:
            require(math.isfinite(self.max_tpot_p99_ms) and self.max_tpot_p99_ms > 0, "search.max_tpot_p99_ms",
                    self.max_tpot_p99_ms, "must be a finite number of ms > 0, or null for no constraint")
        require(math.isfinite(self.infeasible_value), "search.infeasible_value", self.infeasible_value,
                "must be a finite number (Optuna cannot rank inf or NaN)")
