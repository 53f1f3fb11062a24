"""The store: resolving ``tracking.uri``, creating the store and experiment once, opening runs.

Problems are found here, before any work: an unreachable server (or a fall back to the local
store with ``tracking.strict=false``), an unwritable folder, a file that is not a database.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ascend_lab.config.tracking import TrackingConfig
from ascend_lab.errors import AscendLabError
from ascend_lab.tracking.half_created import set_aside_if_half_created
from ascend_lab.tracking.client import PARENT_TAG, mlflow_client, with_lock_retries
from ascend_lab.tracking.tracker import MlflowTracker
from ascend_lab.tracking.ui import SQLITE_PREFIX, experiment_tags

log = logging.getLogger(__name__)

# How long the health check of a tracking server may take before it counts as unreachable.
SERVER_CHECK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Store:
    uri: str
    experiment_id: str


def resolve_uri(uri: str, launch_dir: Path) -> str:
    """Make a relative ``sqlite:///`` path absolute against the launch directory."""
    if uri.startswith(SQLITE_PREFIX) and not uri.startswith(SQLITE_PREFIX + "/"):
        path = (launch_dir / uri[len(SQLITE_PREFIX):]).resolve()
        return SQLITE_PREFIX + str(path)
    return uri


def _check_server(uri: str, timeout_s: float = SERVER_CHECK_TIMEOUT_S) -> str | None:
    """None when the MLflow server at ``uri`` answers its health check, else the reason."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def prepare_store(cfg: TrackingConfig, launch_dir: Path) -> Store:
    """Create (once) the store and experiment; fail before any work if the server is unreachable."""
    uri = resolve_uri(cfg.uri, launch_dir)
    if uri.startswith(("http://", "https://")):
        problem = _check_server(uri)
        if problem is not None:
            if cfg.strict:
                raise AscendLabError(
                    f"MLflow tracking server {uri} is unreachable ({problem}). Start it (mlflow server ...), "
                    f"fix tracking.uri, set tracking.strict=false to fall back to a local store, or tracking=off.")
            fallback = resolve_uri(TrackingConfig.uri, launch_dir)
            log.warning("MLflow server %s unreachable (%s); tracking.strict=false: logging to the local store %s",
                        uri, problem, fallback)
            print(f"WARNING: tracking server {uri} unreachable; runs go to local store {fallback}", file=sys.stderr)
            uri = fallback
    if uri.startswith(SQLITE_PREFIX):
        db_path = Path(uri[len(SQLITE_PREFIX):])
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AscendLabError(f"cannot create the MLflow store folder {db_path.parent}: {exc}. "
                                 "Launch from a writable directory or set tracking.uri.") from exc
        if not os.access(db_path.parent, os.W_OK):
            raise AscendLabError(f"the MLflow store folder {db_path.parent} is not writable. "
                                 "Launch from a writable directory or set tracking.uri.")
    try:
        if uri.startswith(SQLITE_PREFIX):
            from filelock import FileLock

            # Two processes creating a new SQLite store at once race in MLflow's schema migrations
            # (alembic "table already exists"): only one may create it.
            with FileLock(str(db_path) + ".lock"):
                try:
                    return _store_with_experiment(uri, cfg, launch_dir)
                except Exception:
                    aside = set_aside_if_half_created(db_path)
                    if aside is None:
                        raise
                print(f"note: {db_path} was a half-created MLflow store holding no run; moved it to {aside} "
                      "and created a new one", file=sys.stderr)
                return _store_with_experiment(uri, cfg, launch_dir)
        return _store_with_experiment(uri, cfg, launch_dir)
    except AscendLabError:
        raise
    except Exception as exc:  # a missing database driver, a folder or a non-database at the path, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise AscendLabError(
            f"cannot open the MLflow store tracking.uri={cfg.uri} ({uri}): {type(exc).__name__}: {first}. "
            "Point tracking.uri at a SQLite file (sqlite:///outputs/mlflow.db), a running `mlflow server` "
            "(http://host:port) or a database whose driver is installed, or run with tracking=off.") from exc


def _store_with_experiment(uri: str, cfg: TrackingConfig, launch_dir: Path) -> Store:
    client = mlflow_client(uri)
    experiment = with_lock_retries(client.get_experiment_by_name, cfg.experiment)
    if experiment is not None:
        _tag_experiment(client, experiment)
        return Store(uri, experiment.experiment_id)
    artifact_location = None
    if cfg.artifact_location and not uri.startswith(("http://", "https://")):
        artifact_location = (launch_dir / cfg.artifact_location).resolve().as_uri()
    try:
        experiment_id = with_lock_retries(client.create_experiment, cfg.experiment,
                                          artifact_location=artifact_location, tags=experiment_tags())
    except Exception:  # created by a concurrent job in the meantime
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        experiment_id = experiment.experiment_id
    return Store(uri, experiment_id)


def _tag_experiment(client, experiment) -> None:
    """Give an experiment made before the UI tags existed (or by hand) the ones it lacks; a kind the
    user chose is kept."""
    missing = {k: v for k, v in experiment_tags().items() if k not in experiment.tags}
    for key, value in missing.items():
        with_lock_retries(client.set_experiment_tag, experiment.experiment_id, key, value)


def open_run(store: Store, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None = None) -> MlflowTracker:
    client = mlflow_client(store.uri)
    all_tags = {**({PARENT_TAG: parent_run_id} if parent_run_id else {}), **{k: str(v) for k, v in tags.items()}}
    run = with_lock_retries(client.create_run, store.experiment_id, run_name=run_name, tags=all_tags)
    return MlflowTracker(client, run.info.run_id, store.experiment_id)
