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
import hashlib
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
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ascend_lab.config.tracking import TrackingConfig
from ascend_lab.errors import AscendLabError
from ascend_lab.provenance import installed_versions

log = logging.getLogger(__name__)

SWEEP_FILE = "ascend_lab_sweep.json"
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
PARENT_TAG = "mlflow.parentRunId"
# SQLite answers "database is locked" when parallel jobs write at once; MLflow already waits
# 20 s per statement (busy_timeout), so a few retries on top are plenty and keep the bound finite.
LOCK_RETRIES = 5
# How long the sweep's closing waits for a child whose job process is still alive on this host
# (a launcher that gave up on a batch may leave workers finishing their job).
CLOSE_WAIT_S = 30.0
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
        # The flavors log through the fluent API, which uses the global tracking URI (else a default
        # ./mlflow.db where this run does not exist) and the active run's experiment for the
        # LoggedModel: point both at this run for the call.
        was_set, previous_uri = mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.client.tracking_uri)
        try:
            with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
                info = flavor_module.log_model(model, name=name, **kwargs)
            # Leaving start_run's block marked the run FINISHED; the job's outcome decides that.
            self._call(self.client.update_run, self.run_id, status=RUNNING)
        finally:
            mlflow.set_tracking_uri(previous_uri if was_set else None)
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
    try:
        if uri.startswith("sqlite:///"):
            from filelock import FileLock

            # Two processes creating a new SQLite store at once race in MLflow's schema migrations
            # (alembic "table already exists"): only one may create it.
            with FileLock(str(db_path) + ".lock"):
                return _store_with_experiment(uri, cfg, launch_dir)
        return _store_with_experiment(uri, cfg, launch_dir)
    except Exception as exc:  # a missing database driver, a folder or a non-database at the path, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise AscendLabError(
            f"cannot open the MLflow store tracking.uri={cfg.uri} ({uri}): {type(exc).__name__}: {first}. "
            "Point tracking.uri at a SQLite file (sqlite:///outputs/mlflow.db), a running `mlflow server` "
            "(http://host:port) or a database whose driver is installed, or run with tracking=off.") from exc


def _store_with_experiment(uri: str, cfg: TrackingConfig, launch_dir: Path) -> Store:
    from mlflow import MlflowClient

    client = with_lock_retries(MlflowClient, tracking_uri=uri)
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

    client = with_lock_retries(MlflowClient, tracking_uri=store.uri)
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
    return {"python": sys.version.split()[0], **installed_versions(VERSIONED_PACKAGES)}


def environment_tags(launch_dir: Path) -> dict[str, str]:
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    from ascend_lab.cann import toolkit_version

    tags["version.cann"] = toolkit_version() or "not installed"
    tags["host"] = socket.gethostname()
    # With host, identifies the process that owns the run: a job killed from outside (or by a
    # launcher's timeout) is found by it, and close_parent can tell a live job from a dead one.
    tags["pid"] = str(os.getpid())
    commit = git_commit(launch_dir) or git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def config_params(cfg: DictConfig) -> dict[str, Any]:
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    return flatten(resolved)


# Switches that say how to run a job, not what it computes: a job is the same job with or without them.
HASH_EXCLUDED_KEYS = ("tracking.skip_finished",)
CONFIG_HASH_TAG = "config_hash"


def config_hash(cfg: DictConfig) -> str:
    """The job's identity: sha256 (16 hex digits) of its resolved config without ``hydra`` and the skip switch."""
    params = {k: v for k, v in config_params(cfg).items() if k not in HASH_EXCLUDED_KEYS}
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_finished_run(store: Store, digest: str) -> str | None:
    """The id of a FINISHED run in the store's experiment with config hash ``digest``, if any."""
    from mlflow import MlflowClient

    client = with_lock_retries(MlflowClient, tracking_uri=store.uri)
    runs = with_lock_retries(
        client.search_runs, [store.experiment_id],
        filter_string=f"tags.{CONFIG_HASH_TAG} = '{digest}' and attributes.status = '{FINISHED}'",
        max_results=1, order_by=["attributes.end_time DESC"])
    return runs[0].info.run_id if runs else None


SKIPPED_TAG_PREFIX = "skipped_job."


def record_skipped_job(store: Store, parent_run_id: str, job_num: int | str, finished_run_id: str) -> None:
    """Note on the sweep's parent that job ``job_num`` was skipped (one tag per job: no write races)."""
    from mlflow import MlflowClient

    client = with_lock_retries(MlflowClient, tracking_uri=store.uri)
    with_lock_retries(client.set_tag, parent_run_id, f"{SKIPPED_TAG_PREFIX}{job_num}", finished_run_id)


# ---------------------------------------------------------------------------------------------
# Sweeps


def read_sweep_file(sweep_dir: Path) -> dict[str, str] | None:
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _live_local_job(run) -> int | None:
    """The pid of ``run``'s job process if it runs on this host and is still alive (not us)."""
    tags = run.data.tags
    try:
        pid = int(tags.get("pid", ""))
    except ValueError:
        return None
    if tags.get("host") != socket.gethostname() or pid == os.getpid():
        return None
    return pid if _process_alive(pid) else None


def _wait_for_live_jobs(client, runs: list, wait_s: float) -> list:
    """Give children whose job process is still alive on this host up to ``wait_s`` to end their runs."""
    deadline = time.monotonic() + wait_s
    refreshed = []
    for run in runs:
        while (run.info.status == RUNNING and _live_local_job(run) is not None
               and time.monotonic() < deadline):
            time.sleep(0.5)
            run = with_lock_retries(client.get_run, run.info.run_id)
        refreshed.append(run)
    return refreshed


def close_parent(store: Store, parent_run_id: str, interrupted: bool = False,
                 wait_s: float = CLOSE_WAIT_S, recount: bool = False) -> dict[str, int]:
    """End the sweep's parent run from its children's statuses; returns the counts.

    A child still RUNNING here belonged to a job whose process died (killed, timed out, or
    abandoned by its launcher): it is marked FAILED (KILLED after Ctrl-C) with the reason, so
    nothing is left RUNNING. A child whose process is still alive on this host gets ``wait_s``
    to finish first. Jobs skipped because their config already finished (resume) are counted
    from the parent's ``skipped_job.<num>`` tags.

    ``recount=True`` is for a job that ends after its sweep was closed (a launcher gave up on the
    batch while the job's own process went on): it refreshes the closed parent's counts and status
    and touches no child.
    """
    from mlflow import MlflowClient

    client = with_lock_retries(MlflowClient, tracking_uri=store.uri)
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
    try:
        from ascend_lab.bench.summary import summarize_sweep
    except ImportError:
        summarize_sweep = None
    if summarize_sweep is not None and children and not recount:
        try:
            summarize_sweep(tracker, [c for c in children])
        except Exception as exc:  # a summary problem must not leave the parent RUNNING
            log.warning("sweep summary failed: %s", exc)
    nothing_done = not children and not skipped
    status = KILLED if interrupted else (FAILED if failed or nothing_done else FINISHED)
    error = f"{failed} of {len(children)} jobs failed" if failed else ("no job ran" if nothing_done else None)
    if recount and not error and "error" in parent.data.tags:
        with_lock_retries(client.delete_tag, parent_run_id, "error")
    tracker.end(status, error)
    return counts


class SweepCallback(Callback):
    """Opens one MLflow parent run per ``-m`` sweep, before any job starts, and closes it.

    Hydra turns exceptions raised in callbacks into warnings, so a tracking store that cannot be
    set up (server unreachable with ``tracking.strict=true``, unwritable folder) stops the sweep
    here with ``SystemExit(1)`` and the reason, before any job is launched.
    """

    interrupted = False  # set by ascend_lab.run.main on Ctrl-C

    def __init__(self) -> None:
        self._store: Store | None = None
        self._parent_run_id: str | None = None

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
        launch_dir = Path.cwd()
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self._store = prepare_store(tracking, launch_dir)
        tags = {"sweep_dir": str(sweep_dir.resolve()), "command": " ".join(sys.argv), "sweep": "parent",
                "launcher": str(OmegaConf.select(config, "hydra.runtime.choices.hydra/launcher") or "basic"),
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

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        """Record a job that failed before it could open its run (e.g. an invalid swept value)."""
        from hydra.types import RunMode
        from hydra.core.utils import JobStatus

        if job_return.status != JobStatus.FAILED or config.hydra.mode != RunMode.MULTIRUN:
            return
        if not OmegaConf.select(config, "tracking.enabled"):
            return
        sweep = read_sweep_file(Path(str(config.hydra.sweep.dir)))
        if sweep is None:
            return
        store = Store(sweep["tracking_uri"], sweep["experiment_id"])
        output_dir = str(config.hydra.runtime.output_dir)
        from mlflow import MlflowClient

        client = with_lock_retries(MlflowClient, tracking_uri=store.uri)
        opened = with_lock_retries(
            client.search_runs, [store.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{sweep['parent_run_id']}' and tags.output_dir = '{output_dir}'",
            max_results=1)
        if opened:
            return
        error = job_return._return_value
        run_name = "-".join(filter(None, ["failed", str(config.hydra.job.override_dirname)]))[:250]
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
        counts = close_parent(store, parent_run_id, interrupted=SweepCallback.interrupted)
        if counts:
            failed = counts.get(FAILED, 0) + counts.get(KILLED, 0)
            print(f"Sweep recorded as MLflow run {parent_run_id}: {counts.get(FINISHED, 0)} finished, "
                  f"{failed} failed, {counts.get('SKIPPED', 0)} skipped (identical config already finished).")
