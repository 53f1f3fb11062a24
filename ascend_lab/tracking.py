"""Tracking: the one interface task code logs through, its MLflow and no-op forms, and the
Hydra callback that gives each sweep a parent run.

Layout in MLflow: a single run is one MLflow run; under ``-m`` the launching process creates one
parent run per sweep (``on_multirun_start``) and every job, in whichever process or host a
launcher puts it, opens a child of it. The parent's id travels in a small JSON file in the sweep
directory, so joblib workers and submitit/SLURM jobs find it without environment variables.
A parent is never left RUNNING: it is closed in ``on_multirun_end`` or, when a failed job made
Hydra skip that hook, at interpreter exit, FINISHED only if every child finished.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ascend_lab.config.tracking import TrackingConfig
from ascend_lab.errors import AscendLabError

log = logging.getLogger(__name__)

SWEEP_FILE = "ascend_lab_sweep.json"
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
PARENT_TAG = "mlflow.parentRunId"
# SQLite answers "database is locked" when parallel jobs write at once; MLflow already waits
# 20 s per statement (busy_timeout), so a few retries on top are plenty and keep the bound finite.
LOCK_RETRIES = 5
VERSIONED_PACKAGES = ("torch", "torch_npu", "transformers", "onnx", "onnxruntime", "mlflow", "hydra-core")


class Tracker:
    """What tasks call to record a run. This base form records nothing (``tracking=off``)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or a folder's contents, under ``artifact_path``."""

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_model(self, flavor: str, model: Any, name: str, **kwargs: Any) -> str | None:
        """Log a model with an MLflow flavor (``pytorch``, ``onnx``); returns its model URI."""
        return None

    def end(self, status: str, error: str | None = None) -> None: ...

    @contextmanager
    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator["Tracker"]:
        """A nested run (MLflow child) for one stage; ends with the block's outcome."""
        yield Tracker()


class MlflowTracker(Tracker):
    def __init__(self, client, run_id: str, experiment_id: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return with_lock_retries(fn, *args, **kwargs)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call(self.client.log_batch, self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self._call(self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:8000]) for k, v in tags.items() if v is not None]
        if items:
            self._call(self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        local_path = Path(local_path)
        if local_path.is_dir():
            self._call(self.client.log_artifacts, self.run_id, str(local_path), artifact_path)
        else:
            self._call(self.client.log_artifact, self.run_id, str(local_path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(self.client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        self._call(self.client.log_dict, self.run_id, dict(dictionary), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._call(self.client.log_figure, self.run_id, figure, artifact_file)

    def log_model(self, flavor: str, model: Any, name: str, **kwargs: Any) -> str | None:
        import importlib

        import mlflow

        flavor_module = importlib.import_module(f"mlflow.{flavor}")
        # The flavors log through the fluent API: make this run the active one for the call.
        with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
            info = flavor_module.log_model(model, name=name, **kwargs)
        return info.model_uri

    def end(self, status: str, error: str | None = None) -> None:
        if error:
            self.set_tags({"error": error})
        self._call(self.client.set_terminated, self.run_id, status)

    @contextmanager
    def child(self, run_name: str, tags: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
        run = self._call(self.client.create_run, self.experiment_id, run_name=run_name,
                         tags={PARENT_TAG: self.run_id, **(tags or {})})
        child = MlflowTracker(self.client, run.info.run_id, self.experiment_id)
        with ending(child):
            yield child


@contextmanager
def ending(tracker: Tracker) -> Iterator[Tracker]:
    """End ``tracker``'s run with the block's outcome: FINISHED, FAILED (error recorded) or KILLED."""
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.end(KILLED, "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        tracker.end(FAILED, "".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    else:
        tracker.end(FINISHED)


def with_lock_retries(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    for attempt in range(LOCK_RETRIES + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "database is locked" not in str(exc) or attempt == LOCK_RETRIES:
                raise
            time.sleep(0.5 * (attempt + 1))


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


# ---------------------------------------------------------------------------------------------
# The store


@dataclass(frozen=True)
class Store:
    uri: str
    experiment_id: str


def resolve_uri(uri: str, launch_dir: Path) -> str:
    """Make a relative ``sqlite:///`` path absolute against the launch directory."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (launch_dir / uri[len(prefix):]).resolve()
        return prefix + str(path)
    return uri


def _check_server(uri: str, timeout_s: float = 5.0) -> str | None:
    """None when the MLflow server at ``uri`` answers its health check, else the reason."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def prepare_store(cfg: TrackingConfig, launch_dir: Path) -> Store:
    """Create (once) the store and experiment; fail before any work if the server is unreachable."""
    from mlflow import MlflowClient

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
    if uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///"):])
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AscendLabError(f"cannot create the MLflow store folder {db_path.parent}: {exc}. "
                                 "Launch from a writable directory or set tracking.uri.") from exc
        if not os.access(db_path.parent, os.W_OK):
            raise AscendLabError(f"the MLflow store folder {db_path.parent} is not writable. "
                                 "Launch from a writable directory or set tracking.uri.")
    client = MlflowClient(tracking_uri=uri)
    experiment = with_lock_retries(client.get_experiment_by_name, cfg.experiment)
    if experiment is not None:
        return Store(uri, experiment.experiment_id)
    artifact_location = None
    if cfg.artifact_location and not uri.startswith(("http://", "https://")):
        artifact_location = (launch_dir / cfg.artifact_location).resolve().as_uri()
    try:
        experiment_id = with_lock_retries(client.create_experiment, cfg.experiment, artifact_location=artifact_location)
    except Exception:  # created by a concurrent job in the meantime
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            raise
        experiment_id = experiment.experiment_id
    return Store(uri, experiment_id)


def open_run(store: Store, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None = None) -> MlflowTracker:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store.uri)
    all_tags = {**({PARENT_TAG: parent_run_id} if parent_run_id else {}), **{k: str(v) for k, v in tags.items()}}
    run = with_lock_retries(client.create_run, store.experiment_id, run_name=run_name, tags=all_tags)
    return MlflowTracker(client, run.info.run_id, store.experiment_id)


# ---------------------------------------------------------------------------------------------
# Run metadata


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"atc": {"soc_version": ..}}`` → ``{"atc.soc_version": ..}``; lists stay one value."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def git_commit(directory: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment_tags(launch_dir: Path) -> dict[str, str]:
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    from ascend_lab.cann import toolkit_version

    tags["version.cann"] = toolkit_version() or "not installed"
    tags["host"] = socket.gethostname()
    commit = git_commit(launch_dir) or git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def config_params(cfg: DictConfig) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    return flatten(resolved)


# ---------------------------------------------------------------------------------------------
# Sweeps


def read_sweep_file(sweep_dir: Path) -> dict[str, str] | None:
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def close_parent(store: Store, parent_run_id: str, interrupted: bool = False) -> dict[str, int]:
    """End the sweep's parent run from its children's statuses; returns the counts.

    A child still RUNNING here belonged to a job whose process died (killed, timed out): it is
    marked FAILED so that nothing is left RUNNING.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store.uri)
    parent = client.get_run(parent_run_id)
    if parent.info.status != RUNNING:
        return {}
    children = client.search_runs([store.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=10000)
    counts = {FINISHED: 0, FAILED: 0, KILLED: 0}
    for child in children:
        status = child.info.status
        if status == RUNNING:
            status = KILLED if interrupted else FAILED
            client.set_tag(child.info.run_id, "error",
                           "interrupted" if interrupted else "job ended without closing its run (process killed or timed out)")
            client.set_terminated(child.info.run_id, status)
        counts[status] = counts.get(status, 0) + 1
    failed = counts.get(FAILED, 0) + counts.get(KILLED, 0)
    tracker = MlflowTracker(client, parent_run_id, store.experiment_id)
    tracker.set_tags({"jobs_total": len(children), "jobs_failed": failed, "jobs_finished": counts[FINISHED]})
    tracker.log_metrics({"jobs_total": len(children), "jobs_failed": failed})
    try:
        from ascend_lab.bench.summary import summarize_sweep
    except ImportError:
        summarize_sweep = None
    if summarize_sweep is not None and children:
        try:
            summarize_sweep(tracker, [c for c in children])
        except Exception as exc:  # a summary problem must not leave the parent RUNNING
            log.warning("sweep summary failed: %s", exc)
    status = KILLED if interrupted else (FAILED if failed or not children else FINISHED)
    tracker.end(status, f"{failed} of {len(children)} jobs failed" if failed else None)
    return counts


class SweepCallback(Callback):
    """Opens one MLflow parent run per ``-m`` sweep, before any job starts, and closes it."""

    interrupted = False  # set by ascend_lab.run.main on Ctrl-C

    def __init__(self) -> None:
        self._store: Store | None = None
        self._parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracking = OmegaConf.to_object(config.tracking)
        if not tracking.enabled:
            return
        launch_dir = Path.cwd()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self._store = prepare_store(tracking, launch_dir)
        tags = {"sweep_dir": str(sweep_dir.resolve()), "command": " ".join(sys.argv), "sweep": "parent",
                **environment_tags(launch_dir)}
        task = OmegaConf.select(config, "task")
        tags["task"] = str(getattr(task, "value", task))
        run_name = tracking.run_name or f"sweep-{sweep_dir.name}"
        parent = open_run(self._store, run_name, tags)
        self._parent_run_id = parent.run_id
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(
            {"tracking_uri": self._store.uri, "experiment_id": self._store.experiment_id,
             "parent_run_id": parent.run_id}))
        log.info("MLflow sweep parent run %s in %s", parent.run_id, self._store.uri)
        atexit.register(self._close)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self._store is None or self._parent_run_id is None:
            return
        store, parent_run_id, self._store = self._store, self._parent_run_id, None
        counts = close_parent(store, parent_run_id, interrupted=SweepCallback.interrupted)
        if counts:
            failed = counts.get(FAILED, 0) + counts.get(KILLED, 0)
            print(f"Sweep recorded as MLflow run {parent_run_id}: {counts.get(FINISHED, 0)} finished, {failed} failed.")
