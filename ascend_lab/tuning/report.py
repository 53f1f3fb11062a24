"""The report of an automatic search, on the sweep's parent run: what was tried, what won, and by how much.

Called through the sweep machinery's summarizer hook (``hydra.callbacks.tracking.summarizer``, which the
``conf/hparams_search/*.yaml`` presets point here): first the usual benchmark summary of the trials
(:func:`ascend_lab.bench.summary.summarize_sweep`), then, from the trials' runs (``search_objective``,
``search_feasible``, their params and their Hydra overrides):

- ``search_trials.png``: each trial's objective in the order they ran, infeasible ones marked, the best so far as a
  line and the default configuration as a reference line;
- ``best_overrides.txt``: the best trial's command-line overrides, one shell-quoted line, logged on the parent and
  written into the sweep's folder; the console prints its path and the replay command, to copy as printed
  (``eval python -m ascend_lab.run "$(cat <sweep folder>/best_overrides.txt)"`` does the same from the file);
- ``search_report.md`` and the console: the best configuration (the searched keys' values) against the default one
  (trial 0, every searched key at its default: :class:`~ascend_lab.tuning.sampler.DefaultsFirstSampler`), with the
  speedup; metrics ``search_best_value``, ``search_default_value``, ``search_speedup``.
"""

from __future__ import annotations

import logging
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ascend_lab.bench.summary import summarize_sweep
from ascend_lab.report import format_number, format_table
from ascend_lab.tuning.sampler import default_of

log = logging.getLogger(__name__)

OVERRIDES_FILE, PLOT_FILE, REPORT_FILE = "best_overrides.txt", "search_trials.png", "search_report.md"
OVERRIDES_ARTIFACT = "hydra/overrides.yaml"  # where every job's run keeps Hydra's record of its overrides
# Overrides that say how the sweep runs, not what a trial is.
NOT_REPLAYED = ("hydra.", "hydra/")
# Params that differ between trials without being searched (how a job is recorded or launched).
NOT_SEARCHED = ("tracking.", "hydra.")


@dataclass
class Trial:
    run: object
    number: int
    objective: float
    feasible: bool
    params: dict[str, str]

    @classmethod
    def of(cls, run) -> "Trial | None":
        m, tags = run.data.metrics, run.data.tags
        if "search_objective" not in m:
            return None
        return cls(run, int(tags.get("job_num", 0)), m["search_objective"], bool(m.get("search_feasible", 0.0)),
                   dict(run.data.params))


def summarize_search(tracker, child_runs: Sequence) -> str | None:
    """The sweep summary, then the search report (see the module docstring)."""
    summarize_sweep(tracker, child_runs)
    trials = sorted(filter(None, (Trial.of(r) for r in child_runs if r.info.status == "FINISHED")),
                    key=lambda t: t.number)
    if not trials:
        log.info("search report: no finished trial recorded search_objective")
        return None
    searched = _searched_keys(trials)
    default = next((t for t in trials if all(_same(t.params.get(k), default_of(k)) for k in searched)), None)
    feasible = [t for t in trials if t.feasible]
    best = max(feasible, key=lambda t: t.objective) if feasible else None
    metric = trials[0].params.get("search.metric", "objective")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _plot(trials, best, default, metric, folder / PLOT_FILE)
        tracker.log_artifact(folder / PLOT_FILE)
        text = _report(trials, searched, best, default, metric)
        (folder / REPORT_FILE).write_text(text + "\n", encoding="utf-8")
        tracker.log_artifact(folder / REPORT_FILE)
        if best is not None:
            overrides = replay_overrides(tracker, best.run)
            (folder / OVERRIDES_FILE).write_text(shlex.join(overrides) + "\n", encoding="utf-8")
            tracker.log_artifact(folder / OVERRIDES_FILE)
            sweep_dir = _sweep_dir(tracker)
            if sweep_dir is not None:  # beside the trials' folders, where the user looks after the sweep
                (sweep_dir / OVERRIDES_FILE).write_text(shlex.join(overrides) + "\n", encoding="utf-8")
                text += f"\nbest overrides: {sweep_dir / OVERRIDES_FILE}"
            text += f"\nreplay the best: python -m ascend_lab.run {shlex.join(overrides)}"
    figures = {"search_trials": float(len(trials)), "search_feasible_trials": float(len(feasible))}
    if best is not None:
        figures["search_best_value"] = best.objective
    if default is not None:
        figures["search_default_value"] = default.objective
        if best is not None and default.feasible and default.objective > 0:
            figures["search_speedup"] = best.objective / default.objective
    tracker.log_metrics(figures)
    if best is not None:
        tracker.set_tags({"search.best_run": best.run.info.run_id,
                          "search.best": ", ".join(f"{k}={best.params.get(k)}" for k in searched)})
    print(text)
    return text


def _sweep_dir(tracker) -> Path | None:
    """The sweep's folder (the parent run's ``sweep_dir`` tag), where it is on this host."""
    folder = tracker.client.get_run(tracker.run_id).data.tags.get("sweep_dir")
    return Path(folder) if folder and Path(folder).is_dir() else None


def replay_overrides(tracker, run) -> list[str]:
    """The trial's command-line overrides as Hydra recorded them (its ``.hydra/overrides.yaml``: the job's output
    folder where it is on this host, else the run's artifact), without Hydra's own."""
    import yaml

    local = Path(run.data.tags.get("output_dir", "")) / ".hydra" / "overrides.yaml"
    if local.is_file():
        text = local.read_text(encoding="utf-8")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            text = Path(tracker.client.download_artifacts(run.info.run_id, OVERRIDES_ARTIFACT, tmp)).read_text()
    return [o for o in yaml.safe_load(text) or [] if not o.lstrip("+~").startswith(NOT_REPLAYED)]


def _searched_keys(trials: list[Trial]) -> list[str]:
    keys = sorted({k for t in trials for k in t.params if not k.startswith(NOT_SEARCHED)})
    return [k for k in keys if len({t.params.get(k) for t in trials}) > 1]


def _same(param: str | None, default) -> bool:
    return param == ("None" if default is None else str(default))


def _report(trials: list[Trial], searched: list[str], best: Trial | None, default: Trial | None, metric: str) -> str:
    headers = ["configuration", *searched, metric, "feasible"]
    rows = []
    for label, trial in (("best", best), ("default", default)):
        if trial is not None:
            rows.append([f"{label} (trial {trial.number})", *(trial.params.get(k, "-") for k in searched),
                         format_number(trial.objective), "yes" if trial.feasible else "no"])
    title = f"search: {len(trials)} trials, {sum(t.feasible for t in trials)} feasible"
    lines = [format_table(headers, rows, title=title)]
    if best is None:
        lines.append("no trial met the constraint (search.max_tpot_p99_ms); relax it or search other values")
    elif default is None:
        lines.append("the default configuration is not among the trials (use the DefaultsFirstSampler)")
    elif not default.feasible:
        lines.append(f"the default configuration breaks the constraint; best feasible {metric} "
                     f"{format_number(best.objective)}")
    else:
        lines.append(f"best {metric} {format_number(best.objective)} against the default's "
                     f"{format_number(default.objective)}: {best.objective / default.objective:.2f}× "
                     f"(one run each on this host: repeat the best and the default to tell noise from gain)")
    return "\n".join(lines)


def _plot(trials: list[Trial], best: Trial | None, default: Trial | None, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    ok = [t for t in trials if t.feasible]
    bad = [t for t in trials if not t.feasible]
    ax.scatter([t.number for t in ok], [t.objective for t in ok], label="feasible", zorder=3)
    ax.scatter([t.number for t in bad], [t.objective for t in bad], marker="x", color="tab:red",
               label="infeasible (penalty)", zorder=3)
    running, best_so_far = [], None
    for t in trials:
        if t.feasible and (best_so_far is None or t.objective > best_so_far):
            best_so_far = t.objective
        running.append(best_so_far)
    ax.step([t.number for t in trials], [r if r is not None else float("nan") for r in running], where="post",
            color="tab:green", label="best so far")
    if default is not None:
        ax.axhline(default.objective, color="gray", linestyle="--", label=f"default (trial {default.number})")
    if best is not None:
        ax.annotate("best", (best.number, best.objective), textcoords="offset points", xytext=(5, 5))
    ax.set(xlabel="trial", ylabel=metric, title="automatic search: trials")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
