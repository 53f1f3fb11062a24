"""The sweep lifecycle: one parent run per ``-m`` sweep, its children, and closing it.

The launching process creates the parent (``SweepCallback.on_multirun_start``) and every job, in
whichever process or host a launcher puts it, opens a child of it. The parent's id travels in a
small JSON file in the sweep directory (:data:`SWEEP_FILE`), so joblib workers and submitit/SLURM
jobs find it without environment variables. A parent is never left RUNNING: it is closed in
``on_multirun_end`` or, when a failed job made Hydra skip that hook, at interpreter exit, FINISHED
only if every child finished (a launcher killed outright is handled by the reaper at the next
job's start).

What a sweep's parent shows beyond the counts (the benchmark summary table and plot) is not this
module's business: the callback takes a ``summarizer`` (``hydra.callbacks.tracking.summarizer`` in
conf/config.yaml names ``ascend_lab.bench.summary.summarize_sweep``), called with the parent's
tracker and the child runs before the parent is closed.
"""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ascend_lab.config.tracking import TrackingConfig
from ascend_lab.errors import AscendLabError
from ascend_lab.tracking.client import FAILED, FINISHED, KILLED, PARENT_TAG, RUNNING, mlflow_client, \
    with_lock_retries
from ascend_lab.tracking.metadata import environment_tags
from ascend_lab.tracking.owner import live_local_job
from ascend_lab.tracking.run_names import job_name, sweep_name
from ascend_lab.tracking.resume import CONFIG_HASH_TAG, SKIPPED_TAG_PREFIX, config_hash
from ascend_lab.tracking.store import Store, open_run, prepare_store
from ascend_lab.tracking.tracker import MlflowTracker, Tracker
from ascend_lab.tracking.ui import browse_hint

log = logging.getLogger(__name__)

SWEEP_FILE = "ascend_lab_sweep.json"
# How long the sweep's closing waits for a child whose job process is still alive on this host
# (a launcher that gave up on a batch may leave workers finishing their job).
CLOSE_WAIT_S = 30.0
# How often that wait looks at the child's status again.
CLOSE_POLL_S = 0.5
# Where the callback's summarizer is set, for messages about it.
SUMMARIZER_KEY = "hydra.callbacks.tracking.summarizer"

# (the parent's tracker, the child runs) → logs whatever summary it makes on the parent.
Summarizer = Callable[[Tracker, list], None]


def swept_values(config: DictConfig) -> dict[str, str]:
    """The keys a sweep varies, with their values as written: the command line's sweeps (``b=1,4,8``) and the
    sweeper's ``params`` (an Optuna search's ``choice(...)``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, swept = OverridesParser.create(), {}
    for override in config.hydra.overrides.task:
        try:
            parsed = parser.parse_override(override)
        except HydraException:
            continue
        if parsed.is_sweep_override():
            swept[parsed.key_or_group] = override.partition("=")[2]
    for key, value in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items():
        swept.setdefault(str(key), str(value))
    return swept


def read_sweep_file(sweep_dir: Path) -> dict | None:
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _wait_for_live_jobs(client, runs: list, wait_s: float) -> list:
    """Give children whose job process is still alive on this host up to ``wait_s`` to end their runs."""
    deadline = time.monotonic() + wait_s
    refreshed = []
    for run in runs:
        while (run.info.status == RUNNING and live_local_job(run) is not None
               and time.monotonic() < deadline):
            time.sleep(CLOSE_POLL_S)
            run = with_lock_retries(client.get_run, run.info.run_id)
        refreshed.append(run)
    return refreshed


def close_parent(store: Store, parent_run_id: str, interrupted: bool = False,
                 wait_s: float = CLOSE_WAIT_S, recount: bool = False,
                 summarize: Summarizer | None = None) -> dict[str, int]:
    """End the sweep's parent run from its children's statuses; returns the counts.

    A child still RUNNING here belonged to a job whose process died (killed, timed out, or
    abandoned by its launcher): it is marked FAILED (KILLED after Ctrl-C) with the reason, so
    nothing is left RUNNING. A child whose process is still alive on this host gets ``wait_s``
    to finish first. Jobs skipped because their config already finished (resume) are counted
    from the parent's ``skipped_job.<num>`` tags. ``summarize`` (if given) logs its summary of the
    children on the parent; a failure in it is a warning, never a parent left RUNNING.

    ``recount=True`` is for a job that ends after its sweep was closed (a launcher gave up on the
    batch while the job's own process went on): it refreshes the closed parent's counts and status
    and touches no child.
    """
    client = mlflow_client(store.uri)
    parent = with_lock_retries(client.get_run, parent_run_id)
    if (parent.info.status != RUNNING) != recount:
        return {}
    if recount:
        interrupted = parent.info.status == KILLED
    children = with_lock_retries(
        client.search_runs, [store.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        max_results=10000)
    if not interrupted and not recount:
        children = _wait_for_live_jobs(client, children, wait_s)
    counts = {FINISHED: 0, FAILED: 0, KILLED: 0}
    for child in children:
        status = child.info.status
        if status == RUNNING and not recount:
            status = KILLED if interrupted else FAILED
            tags = child.data.tags
            where = f" (pid {tags['pid']} on {tags.get('host', '?')})" if "pid" in tags else ""
            reason = ("interrupted (Ctrl-C) before the job closed its run" if interrupted
                      else f"job process ended without closing its run{where}: killed, crashed or timed out")
            with_lock_retries(client.set_tag, child.info.run_id, "error", reason)
            with_lock_retries(client.set_terminated, child.info.run_id, status)
        counts[status] = counts.get(status, 0) + 1
    skipped = sum(1 for key in parent.data.tags if key.startswith(SKIPPED_TAG_PREFIX))
    counts["SKIPPED"] = skipped
    failed = counts.get(FAILED, 0) + counts.get(KILLED, 0)
    tracker = MlflowTracker(client, parent_run_id, store.experiment_id)
    tracker.set_tags({"jobs_total": len(children) + skipped, "jobs_failed": failed,
                      "jobs_finished": counts[FINISHED], "jobs_skipped": skipped})
    tracker.log_metrics({"jobs_total": len(children) + skipped, "jobs_failed": failed, "jobs_skipped": skipped})
    if summarize is not None and children and not recount:
        try:
            summarize(tracker, list(children))
        except Exception as exc:  # a summary problem must not leave the parent RUNNING
            log.warning("sweep summary failed: %s", exc)
    nothing_done = not children and not skipped
    status = KILLED if interrupted else (FAILED if failed or nothing_done else FINISHED)
    error = f"{failed} of {len(children)} jobs failed" if failed else ("no job ran" if nothing_done else None)
    if recount and not error and "error" in parent.data.tags:
        with_lock_retries(client.delete_tag, parent_run_id, "error")
    tracker.end(status, error)
    return counts


def resolve_summarizer(path: str | None) -> Summarizer | None:
    """The function named by ``path`` (``package.module.function``); None, with a warning naming the
    config key, when it cannot be imported (the sweep still runs and closes, without a summary)."""
    if not path:
        return None
    from hydra.utils import get_method

    try:
        return get_method(path)
    except Exception as exc:
        log.warning("%s=%s cannot be imported (%s); sweeps get no summary. Name an importable function "
                    "(package.module.function) or remove the key.", SUMMARIZER_KEY, path, exc)
        return None


def _each(summarizers: list[Summarizer]) -> Summarizer:
    """One summarizer that calls every one of ``summarizers`` (each picks the children it knows how to show)."""

    def summarize(tracker: Tracker, runs: list) -> None:
        for summarize_one in summarizers:
            summarize_one(tracker, runs)

    return summarize


class SweepCallback(Callback):
    """Opens one MLflow parent run per ``-m`` sweep, before any job starts, and closes it.

    ``summarizer``: dotted path of a :data:`Summarizer` called on the parent before it closes;
    ``more_summarizers``: further ones, called after it.

    Hydra turns exceptions raised in callbacks into warnings, so a tracking store that cannot be
    set up (server unreachable with ``tracking.strict=true``, unwritable folder) stops the sweep
    here with ``SystemExit(1)`` and the reason, before any job is launched.
    """

    interrupted = False  # set by ascend_lab.run.main on Ctrl-C

    def __init__(self, summarizer: str | None = None, more_summarizers: list[str] | None = None) -> None:
        found = [f for f in (resolve_summarizer(path) for path in [summarizer, *(more_summarizers or [])]) if f]
        self._summarize = found[0] if len(found) == 1 else (_each(found) if found else None)
        self._store: Store | None = None
        self._parent_run_id: str | None = None
        self._launch_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = OmegaConf.to_object(config.tracking)
        if not tracking.enabled:
            return
        try:
            self._open_parent(config, tracking)
        except AscendLabError as exc:
            print(str(exc), file=sys.stderr)
            raise SystemExit(1) from exc
        except Exception as exc:
            log.exception("cannot set up MLflow tracking for the sweep")
            print(f"Cannot set up MLflow tracking for the sweep ({type(exc).__name__}: {exc}); no job was "
                  "started. Fix tracking.uri or run with tracking=off.", file=sys.stderr)
            raise SystemExit(1) from exc

    def _open_parent(self, config: DictConfig, tracking: TrackingConfig) -> None:
        launch_dir = self._launch_dir = Path.cwd()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self._store = prepare_store(tracking, launch_dir)
        tags = {"sweep_dir": str(sweep_dir.resolve()), "command": " ".join(sys.argv), "sweep": "parent",
                "launcher": str(OmegaConf.select(config, "hydra.runtime.choices.hydra/launcher") or "basic"),
                **environment_tags(launch_dir)}
        task = OmegaConf.select(config, "task")
        tags["task"] = str(getattr(task, "value", task))
        swept = swept_values(config)
        preset = OmegaConf.select(config, "hydra.runtime.choices.hparams_search")
        run_name = tracking.run_name or sweep_name(tags["task"], swept, preset)
        parent = open_run(self._store, run_name, tags)
        self._parent_run_id = parent.run_id
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(
            {"tracking_uri": self._store.uri, "experiment_id": self._store.experiment_id,
             "parent_run_id": parent.run_id, "swept": list(swept)}))
        log.info("MLflow sweep parent run %s in %s", parent.run_id, self._store.uri)
        atexit.register(self._close)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Record a job that failed before it could open its run (e.g. an invalid swept value)."""
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if job_return.status != JobStatus.FAILED or config.hydra.mode != RunMode.MULTIRUN:
            return
        if not OmegaConf.select(config, "tracking.enabled"):
            return
        sweep = read_sweep_file(Path(str(config.hydra.sweep.dir)))
        if sweep is None:
            return
        store = Store(sweep["tracking_uri"], sweep["experiment_id"])
        output_dir = str(config.hydra.runtime.output_dir)
        client = mlflow_client(store.uri)
        opened = with_lock_retries(
            client.search_runs, [store.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{sweep['parent_run_id']}' and tags.output_dir = '{output_dir}'",
            max_results=1)
        if opened:
            return
        error = job_return._return_value
        run_name = job_name("failed", config.hydra.overrides.task, sweep.get("swept"))
        tags = {"output_dir": output_dir, "job_num": config.hydra.job.num, CONFIG_HASH_TAG: config_hash(config),
                **environment_tags(Path.cwd())}
        tracker = open_run(store, run_name, tags, sweep["parent_run_id"])
        tracker.end(FAILED, "".join(traceback.format_exception_only(type(error), error)).strip()
                    if isinstance(error, BaseException) else "job failed before its run opened")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self._store is None or self._parent_run_id is None:
            return
        store, parent_run_id, self._store = self._store, self._parent_run_id, None
        counts = close_parent(store, parent_run_id, interrupted=SweepCallback.interrupted, summarize=self._summarize)
        if counts:
            failed = counts.get(FAILED, 0) + counts.get(KILLED, 0)
            print(f"Sweep recorded as MLflow run {parent_run_id}: {counts.get(FINISHED, 0)} finished, "
                  f"{failed} failed, {counts.get('SKIPPED', 0)} skipped (identical config already finished).")
            print(browse_hint(store.uri, store.experiment_id, self._launch_dir))
