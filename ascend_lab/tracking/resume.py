"""A job's identity (the ``config_hash`` tag) and resuming: finding a FINISHED run with it.

The identity covers what decides a job's result: ``task``, ``seed`` and the config groups that task
reads (``ascend_lab.config.TASK_GROUPS``). A group the task never reads (``mnist`` for
``task=bench``, and ``tracking`` for every task) is left out, so changing it does not make
``tracking.skip_finished=true`` run a finished job again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from omegaconf import DictConfig

from ascend_lab.config import TASK_GROUPS, Task
from ascend_lab.tracking.client import FINISHED, mlflow_client, with_lock_retries
from ascend_lab.tracking.metadata import config_params

CONFIG_HASH_TAG = "config_hash"
# Top-level keys (not groups) that every task's result depends on.
IDENTITY_KEYS = ("task", "seed")
# Hex digits of the sha256 kept in the tag: 64 bits, ample for one experiment's jobs.
HASH_DIGITS = 16
SKIPPED_TAG_PREFIX = "skipped_job."


def task_params(params: Mapping[str, Any], task: Task | str) -> dict[str, Any]:
    """The flat ``params`` a job of ``task`` depends on: ``seed``, its groups, and ``task`` itself."""
    task = Task(task)
    groups = TASK_GROUPS[task]
    kept = {k: v for k, v in params.items() if k in IDENTITY_KEYS or k.split(".", 1)[0] in groups}
    kept["task"] = task.value
    return kept


def identity_hash(identity: Mapping[str, Any]) -> str:
    """sha256 (``HASH_DIGITS`` hex digits) of a job identity (:func:`task_params`, plus any facts
    that are not config, such as a local checkpoint's config.json hash)."""
    text = json.dumps(dict(identity), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_DIGITS]


def config_hash(cfg: DictConfig) -> str:
    """The job's identity hash from its composed config alone."""
    params = config_params(cfg)
    return identity_hash(task_params(params, params["task"]))


def find_finished_run(store, digest: str) -> str | None:
    """The id of a FINISHED run in the store's experiment with config hash ``digest``, if any."""
    client = mlflow_client(store.uri)
    runs = with_lock_retries(
        client.search_runs, [store.experiment_id],
        filter_string=f"tags.{CONFIG_HASH_TAG} = '{digest}' and attributes.status = '{FINISHED}'",
        max_results=1, order_by=["attributes.end_time DESC"])
    return runs[0].info.run_id if runs else None


def record_skipped_job(store, parent_run_id: str, job_num: int | str, finished_run_id: str) -> None:
    """Note on the sweep's parent that job ``job_num`` was skipped (one tag per job: no write races)."""
    client = mlflow_client(store.uri)
    with_lock_retries(client.set_tag, parent_run_id, f"{SKIPPED_TAG_PREFIX}{job_num}", finished_run_id)
