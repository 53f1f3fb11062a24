"""The job context: what every task receives besides its config.

``job_context`` opens the job's tracking run (a child of the sweep's parent under ``-m``), records
the resolved config, environment tags and Hydra's files, resolves the device lazily (so tasks that
need none, like ``compile``, never import torch), and ends the run with the job's outcome.

At start it also ends the runs that processes killed on this host left RUNNING
(:func:`ascend_lab.tracking.reap_dead_runs`).

Every run logs ``environment.json`` (:mod:`ascend_lab.telemetry.environment`); a job whose task uses a device
samples system metrics into its run from the run's opening to just before its end
(:func:`ascend_lab.telemetry.job_telemetry`, ``telemetry`` group).

Params record what runs: with ``model.weights=pretrained model.path=<folder>`` the architecture
figures and ``model.model_id`` logged are the folder's (its config.json), not the preset's. They are
known before any work, and must be: MLflow params cannot be changed once logged.

Resume: with ``tracking.skip_finished=true`` a job whose identity hash (``task``, ``seed`` and the
groups the task reads, see :mod:`ascend_lab.tracking.resume`) already has a FINISHED run in the
experiment opens no run; ``JobContext.skipped_run_id`` names the finished run and the caller skips
the task.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig

from ascend_lab import preflight
from ascend_lab.config import TASK_GROUPS, AppConfig, Task
from ascend_lab.models import LocalCheckpoint, local_checkpoint, with_launch_paths
from ascend_lab.telemetry import job_telemetry
from ascend_lab.telemetry.environment import log_environment
from ascend_lab.tracking import CONFIG_HASH_TAG, Store, Tracker, browse_hint, config_params, ending, \
    environment_tags, find_finished_run, identity_hash, open_run, prepare_store, read_sweep_file, reap_dead_runs, \
    record_skipped_job, task_params
from ascend_lab.tracking import run_names
from ascend_lab.writable import check_job_folders

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    cfg: AppConfig
    tracker: Tracker
    launch_dir: Path
    output_dir: Path
    skipped_run_id: str | None = None  # resume: the FINISHED run that already did this job
    store: Store | None = None  # None with tracking=off
    checkpoint: LocalCheckpoint | None = None  # the model.path folder the job loads, if any
    started_at: float = field(default_factory=time.time)  # wall clock; the program's start for its first job
    _device: object = field(default=None, repr=False)

    @property
    def device(self):
        """The resolved :class:`ascend_lab.device.Device`; resolved (and tagged) on first use."""
        if self._device is None:
            from ascend_lab.device import resolve_device

            self._device = resolve_device(self.cfg.device)
            label, reason = self._device.label, self._device.reason
            if getattr(self.cfg.runtime, "name", None) == "acl":  # pyACL runs the .om; torch only prepares inputs
                index = self.cfg.device.index
                label, reason = f"npu:{index}", f"runtime=acl runs the .om on NPU {index} with pyACL; " \
                                                f"torch's own work stays on {label} ({reason})"
            self.tracker.set_tags({"device": label, "device.reason": reason})
            log.info("device: %s (%s)", label, reason)
        return self._device

    def device_for(self, runtime_name: str):
        """The job's device once its runtime is known: for runtime=acl the host (:func:`ascend_lab.device.pyacl_host`),
        never resolved through torch_npu; else :attr:`device`."""
        if runtime_name == "acl" and self._device is None:
            from ascend_lab.device import pyacl_host

            self._device = pyacl_host(self.cfg.device.index)
            self.tracker.set_tags({"device": f"npu:{self.cfg.device.index}", "device.reason": self._device.reason})
            log.info("device: npu:%s (%s)", self.cfg.device.index, self._device.reason)
        return self.device

    def path(self, configured: str | Path) -> Path:
        """A configured path; relative ones are taken from the launch directory."""
        return _from_launch_dir(self.launch_dir, configured)

    def params_for(self, cfg: AppConfig, task: Task) -> dict[str, Any]:
        """The params of a stage run that does ``task`` with ``cfg`` (a pipeline stage): the groups that
        task reads, with the loaded checkpoint's figures. MLflow's compare view plots these."""
        return _recorded_params(config_params(cfg), task, self.checkpoint)

    def browse_hint(self) -> str | None:
        """How to open this job's runs table in the MLflow UI; None without tracking."""
        if self.store is None:
            return None
        return browse_hint(self.store.uri, self.store.experiment_id, self.launch_dir)


def _hydra_runtime() -> tuple[Path, Path, bool, Path | None, str, list[str], str | None]:
    """(launch dir, output dir, multirun?, sweep dir, job name, command-line overrides, job num)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # called outside @hydra.main (tests composing by hand)
        return Path.cwd(), Path.cwd(), False, None, "ascend_lab", [], None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return (Path(hc.runtime.cwd), Path(hc.runtime.output_dir), multirun,
            Path(hc.sweep.dir).resolve() if multirun else None, hc.job.name, list(hc.overrides.task),
            str(hc.job.num) if multirun else None)


def _from_launch_dir(launch_dir: Path, configured: str | Path) -> Path:
    path = Path(configured).expanduser()
    return path if path.is_absolute() else launch_dir / path


def _checkpoint_for(cfg: AppConfig, launch_dir: Path) -> LocalCheckpoint | None:
    """The local checkpoint the task loads (tasks that read no model load none)."""
    if "model" not in TASK_GROUPS[cfg.task]:
        return None
    return local_checkpoint(with_launch_paths(cfg.model, lambda p: _from_launch_dir(launch_dir, p)))


def _recorded_params(params: dict[str, Any], task: Task, checkpoint: LocalCheckpoint | None) -> dict[str, Any]:
    """``params`` restricted to what ``task`` reads, with a local checkpoint's figures over the preset's."""
    kept = task_params(params, task)
    if checkpoint is not None and "model" in TASK_GROUPS[task]:
        kept.update(checkpoint.params())
    return kept


def _reap(store: Store) -> None:
    """End the runs left RUNNING by dead processes on this host; a failure here never fails the job."""
    try:
        reaped = reap_dead_runs(store.uri)
    except Exception as exc:  # e.g. a shared server where this user may not end others' runs
        log.warning("could not check %s for runs left RUNNING by dead processes: %s", store.uri, exc)
        return
    if reaped:
        names = ", ".join(f"{r.run_id} ({r.run_name})" for r in reaped)
        print(f"Ended FAILED {len(reaped)} MLflow run(s) left RUNNING by processes that are gone: {names}")


@contextmanager
def job_context(cfg: AppConfig, raw_cfg: DictConfig, started_at: float | None = None) -> Iterator[JobContext]:
    started_at = started_at or time.time()
    launch_dir, output_dir, multirun, sweep_dir, job_name, overrides, job_num = _hydra_runtime()
    check_job_folders(cfg, launch_dir)  # before anything is created or recorded
    preflight.check(cfg, lambda configured: _from_launch_dir(launch_dir, configured))
    if not cfg.tracking.enabled:
        yield JobContext(cfg, Tracker(), launch_dir, output_dir, started_at=started_at)
        return

    parent_run_id = None
    sweep = read_sweep_file(sweep_dir) if sweep_dir else None
    if sweep is not None:
        store = Store(sweep["tracking_uri"], sweep["experiment_id"])
        parent_run_id = sweep["parent_run_id"]
    else:
        store = prepare_store(cfg.tracking, launch_dir)
    _reap(store)
    checkpoint = _checkpoint_for(cfg, launch_dir)
    all_params = config_params(raw_cfg)
    if checkpoint is not None:
        all_params.update(checkpoint.params())
    identity = _recorded_params(all_params, cfg.task, checkpoint)
    if checkpoint is not None:
        identity.update(checkpoint.identity())
    digest = identity_hash(identity)
    if cfg.tracking.skip_finished:
        finished = find_finished_run(store, digest)
        if finished is not None:
            if parent_run_id is not None:
                record_skipped_job(store, parent_run_id, job_num, finished)
            print(f"Skipped: this config ({CONFIG_HASH_TAG}={digest}) already has the FINISHED MLflow run "
                  f"{finished}; drop tracking.skip_finished to run it again.")
            yield JobContext(cfg, Tracker(), launch_dir, output_dir, skipped_run_id=finished, store=store,
                             started_at=started_at)
            return
    task = cfg.task.value
    run_name = cfg.tracking.run_name or run_names.job_name(task, overrides, sweep.get("swept") if sweep else None)
    tags = {"task": task, "output_dir": str(output_dir), CONFIG_HASH_TAG: digest, **environment_tags(launch_dir),
            **(checkpoint.tags() if checkpoint is not None else {})}
    if job_num is not None:
        tags["job_num"] = job_num
    tracker = open_run(store, run_name, tags, parent_run_id)
    print(f"MLflow run {tracker.run_id} ({run_name}) in {store.uri}")
    try:
        with ending(tracker):
            tracker.log_params(all_params)
            tracker.log_dict(_plain(raw_cfg), "config.yaml")
            hydra_dir = output_dir / ".hydra"
            if hydra_dir.is_dir():
                tracker.log_artifact(hydra_dir, "hydra")
            log_environment(tracker, launch_dir, cfg.atc.toolkit_home)
            # Sampling runs from here to just before the run ends, and stops on every way out of the job.
            sampled_run = tracker.run_id if "device" in TASK_GROUPS[cfg.task] else None
            with job_telemetry(cfg.telemetry, sampled_run, store.uri):
                try:
                    yield JobContext(cfg, tracker, launch_dir, output_dir, store=store, checkpoint=checkpoint,
                                     started_at=started_at)
                finally:
                    _log_job_log(tracker, output_dir, job_name)
    finally:
        if parent_run_id is not None:
            _refresh_closed_parent(store, parent_run_id)


def _refresh_closed_parent(store: Store, parent_run_id: str) -> None:
    """A job that outlived its sweep's closing (its launcher gave up on the batch) corrects the parent."""
    from ascend_lab.tracking import close_parent

    try:
        close_parent(store, parent_run_id, recount=True)
    except Exception as exc:  # the job's own run is recorded; a stale parent count is not worth failing it
        log.warning("could not refresh the sweep parent run %s: %s", parent_run_id, exc)


def _plain(raw_cfg: DictConfig) -> dict:
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(raw_cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    return resolved


def _log_job_log(tracker: Tracker, output_dir: Path, job_name: str) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_file = output_dir / f"{job_name}.log"
    if log_file.is_file():
        tracker.log_artifact(log_file)
