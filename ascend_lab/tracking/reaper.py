"""No run left RUNNING: at a job's start, end the runs whose owning process is gone.

A job killed with SIGKILL (or by the OOM killer) cannot end its run, and under the basic launcher
the sweep's parent dies with it: both would stay RUNNING forever. Every run carries the ``host``
and ``pid`` of its owner (:mod:`ascend_lab.tracking.owner`), so the next job started against the
same store ends, FAILED with the tag ``error`` starting ``process gone (killed?)``, every RUNNING
run that this host owned and whose process no longer exists: jobs, sweep parents and pipeline
stages alike (a stage run made before stages carried owner tags goes with its parent).

Runs of live processes and runs owned by other hosts (a cluster's nodes, a colleague's machine on
a shared server) are never touched: from here nothing can tell whether those are still working.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from ascend_lab.tracking.client import FAILED, PARENT_TAG, RUNNING, mlflow_client, with_lock_retries
from ascend_lab.tracking.owner import HOST_TAG, PID_TAG, dead_local_job

log = logging.getLogger(__name__)

PROCESS_GONE = "process gone (killed?)"
# search_* pages; each page is one query however many runs the store holds.
PAGE_SIZE = 1000


@dataclass(frozen=True)
class ReapedRun:
    run_id: str
    run_name: str
    pid: int | None  # None: a stage run without owner tags, ended with its parent


def reap_dead_runs(store_uri: str) -> list[ReapedRun]:
    """End FAILED every RUNNING run in the store owned by a dead process on this host; returns them."""
    client = mlflow_client(store_uri)
    experiment_ids = [e.experiment_id for e in _pages(client.search_experiments)]
    if not experiment_ids:
        return []
    host = socket.gethostname()
    reaped: list[ReapedRun] = []
    for run in _pages(client.search_runs, experiment_ids,
                      filter_string=f"attributes.status = '{RUNNING}' and tags.{HOST_TAG} = '{_quoted(host)}'"):
        pid = dead_local_job(run)
        if pid is None:
            continue
        _end(client, run.info.run_id, f"{PROCESS_GONE}: pid {pid} on {host} ended without closing this run")
        reaped.append(ReapedRun(run.info.run_id, run.info.run_name, pid))
        for stage in _ownerless_running_children(client, run.info.experiment_id, run.info.run_id):
            _end(client, stage.info.run_id,
                 f"{PROCESS_GONE}: its parent run {run.info.run_id} (pid {pid} on {host}) ended without closing it")
            reaped.append(ReapedRun(stage.info.run_id, stage.info.run_name, None))
    return reaped


def _ownerless_running_children(client, experiment_id: str, parent_run_id: str) -> list:
    children = _pages(client.search_runs, [experiment_id],
                      filter_string=f"attributes.status = '{RUNNING}' and tags.`{PARENT_TAG}` = '{parent_run_id}'")
    return [c for c in children if PID_TAG not in c.data.tags]


def _pages(search, *args, **kwargs) -> list:
    """Every result of an MLflow ``search_*`` call, page by page."""
    found, token = [], None
    while True:
        page = with_lock_retries(search, *args, max_results=PAGE_SIZE, page_token=token, **kwargs)
        found.extend(page)
        token = page.token
        if not token:
            return found


def _end(client, run_id: str, reason: str) -> None:
    with_lock_retries(client.set_tag, run_id, "error", f"{reason}; found by pid {os.getpid()} at job start")
    with_lock_retries(client.set_terminated, run_id, FAILED)


def _quoted(value: str) -> str:
    """``value`` inside a single-quoted MLflow filter string."""
    return value.replace("'", "\\'")
