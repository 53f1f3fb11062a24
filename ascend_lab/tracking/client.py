"""Talking to the MLflow store: run statuses, the parent-run tag, and retries on SQLite locks.

Every tracking module reaches MLflow through :func:`mlflow_client` and :func:`with_lock_retries`, so
parallel jobs writing one SQLite file (``hydra/launcher=joblib``) share one retry policy.
"""

from __future__ import annotations

import time
from typing import Any, Callable

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
# MLflow's own tag for nesting: the UI draws a run with it under that parent.
PARENT_TAG = "mlflow.parentRunId"
# SQLite answers "database is locked" when parallel jobs write at once; MLflow already waits
# 20 s per statement (busy_timeout), so a few retries on top are plenty and keep the bound finite.
LOCK_RETRIES = 5
# Seconds before retry n (1-based) is n times this: 0.5, 1.0, ... 2.5 s, 7.5 s in all.
LOCK_BACKOFF_S = 0.5


def with_lock_retries(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, retried while the store answers "database is locked"."""
    for attempt in range(LOCK_RETRIES + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc) or attempt == LOCK_RETRIES:
                raise
            time.sleep(LOCK_BACKOFF_S * (attempt + 1))


def mlflow_client(uri: str):
    """An ``MlflowClient`` for the store at ``uri`` (imported here: mlflow is slow to import)."""
    from mlflow import MlflowClient

    return with_lock_retries(MlflowClient, tracking_uri=uri)
