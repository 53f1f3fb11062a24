"""Tracking: everything ascend_lab records in MLflow, one concern per module.

- :mod:`~ascend_lab.tracking.tracker`: the :class:`Tracker` interface tasks log through, its MLflow
  form, and :func:`ending` (a run ends with its block's outcome).
- :mod:`~ascend_lab.tracking.store`: resolving ``tracking.uri``, creating the store and experiment,
  opening runs.
- :mod:`~ascend_lab.tracking.metadata`: the config as flat params, the environment as tags.
- :mod:`~ascend_lab.tracking.resume`: a job's identity hash and finding a FINISHED run with it.
- :mod:`~ascend_lab.tracking.sweep`: the sweep's parent run (Hydra callback) and its closing.
- :mod:`~ascend_lab.tracking.owner` and :mod:`~ascend_lab.tracking.reaper`: which process owns a
  run, and ending the runs whose process is gone.
- :mod:`~ascend_lab.tracking.ui`: the experiment's UI kind and the link to its runs table.
- :mod:`~ascend_lab.tracking.client`: run statuses, the parent tag, retries on SQLite locks.

Nothing here imports task, benchmark or export code: what a sweep's parent shows beyond its
counts comes in as a summarizer (see :mod:`~ascend_lab.tracking.sweep`). The names below are the
package's public interface; ``conf/config.yaml`` names ``ascend_lab.tracking.SweepCallback``.
"""

from ascend_lab.tracking.client import FAILED, FINISHED, KILLED, LOCK_RETRIES, PARENT_TAG, RUNNING, \
    mlflow_client, with_lock_retries
from ascend_lab.tracking.metadata import VERSIONED_PACKAGES, config_params, environment_tags, flatten, \
    git_commit, package_versions
from ascend_lab.tracking.owner import owner_tags, process_alive
from ascend_lab.tracking.reaper import PROCESS_GONE, ReapedRun, reap_dead_runs
from ascend_lab.tracking.resume import CONFIG_HASH_TAG, SKIPPED_TAG_PREFIX, config_hash, find_finished_run, \
    identity_hash, record_skipped_job, task_params
from ascend_lab.tracking.store import Store, open_run, prepare_store, resolve_uri
from ascend_lab.tracking.sweep import CLOSE_WAIT_S, SWEEP_FILE, SweepCallback, close_parent, read_sweep_file
from ascend_lab.tracking.tracker import MlflowTracker, Tracker, ending
from ascend_lab.tracking.ui import browse_hint, runs_table_url

__all__ = [
    "CLOSE_WAIT_S", "CONFIG_HASH_TAG", "FAILED", "FINISHED", "KILLED", "LOCK_RETRIES", "PARENT_TAG", "PROCESS_GONE",
    "RUNNING", "SKIPPED_TAG_PREFIX", "SWEEP_FILE", "VERSIONED_PACKAGES", "MlflowTracker", "ReapedRun", "Store",
    "SweepCallback", "Tracker", "browse_hint", "close_parent", "config_hash", "config_params", "ending",
    "environment_tags", "find_finished_run", "flatten", "git_commit", "identity_hash", "mlflow_client",
    "open_run", "owner_tags", "package_versions", "prepare_store", "process_alive", "read_sweep_file",
    "reap_dead_runs", "record_skipped_job", "resolve_uri", "runs_table_url", "task_params", "with_lock_retries",
]
