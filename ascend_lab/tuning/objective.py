"""What a job of an automatic search returns (``search.objective``): one number for Hydra's Optuna sweeper.

The number is ``search.metric`` of the job (decode tokens/s by default, higher is better) when the job meets the
constraint ``tpot_ms_p99 <= search.max_tpot_p99_ms``, else ``search.infeasible_value``: a penalty below every
feasible figure, so the sampler ranks the setting last and learns to avoid its region (a constraint Optuna 2.10's
TPE has no other way to take). The job's run records the value and whether it was feasible
(``search_objective``, ``search_feasible``; tag ``search.feasible`` with the reason), which the search's report
(:mod:`ascend_lab.tuning.report`) reads back.
"""

from __future__ import annotations

from ascend_lab.config import AppConfig

TPOT_P99 = "tpot_ms_p99"  # the constrained figure (task=bench's generate scenario)


def job_value(cfg: AppConfig, result, tracker):
    """``result`` unchanged, or with ``search.objective`` the number the sweeper optimises (``result`` is task=bench's
    :class:`~ascend_lab.bench.summary.Row`; ``ascend_lab.config.validate`` allows the objective with task=bench
    only)."""
    search = cfg.search
    if not search.objective:
        return result
    metrics = result.metrics
    value, tpot = metrics.get(search.metric), metrics.get(TPOT_P99)
    if value is None:
        reason = f"no {search.metric} (benchmark.scenario={cfg.benchmark.scenario} does not measure it)"
    elif search.max_tpot_p99_ms is not None and tpot is None:
        reason = f"no {TPOT_P99} to check search.max_tpot_p99_ms against (generate with benchmark.new_tokens > 1)"
    elif search.max_tpot_p99_ms is not None and tpot > search.max_tpot_p99_ms:
        reason = f"{TPOT_P99}={tpot:.3g} ms > search.max_tpot_p99_ms={search.max_tpot_p99_ms:g}"
    else:
        reason = ""
    feasible = not reason
    objective = float(value) if feasible else float(search.infeasible_value)
    tracker.log_metrics({"search_objective": objective, "search_feasible": float(feasible)})
    tracker.set_tags({"search.feasible": "yes" if feasible else f"no: {reason}"})
    print(f"search objective: {search.metric} = {objective:.4g}" + ("" if feasible else
                                                                   f" (infeasible, penalty: {reason})"))
    return objective
