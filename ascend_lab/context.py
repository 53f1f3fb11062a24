"""The job context: what every task receives besides its config.

``job_context`` opens the job's tracking run (a child of the sweep's parent under ``-m``), records
the resolved config, environment tags and Hydra's files, resolves the device lazily (so tasks that
need none, like ``compile``, never import torch), and ends the run with the job's outcome.

Resume: with ``tracking.skip_finished=true`` a job whose
config hash already has a FINISHED run in the experiment opens no run; ``JobContext.skipped_run_id``
names the finished run and the caller skips the task.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from ascend_lab.config import AppConfig
from ascend_lab.tracking import CONFIG_HASH_TAG, Store, Tracker, config_hash, config_params, ending, \
    environment_tags, find_finished_run, open_run, prepare_store, read_sweep_file, record_skipped_job
from ascend_lab.writable import check_job_folders

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    cfg: AppConfig
    tracker: Tracker
    launch_dir: Path
    output_dir: Path
    skipped_run_id: str | None = None  # resume: the FINISHED run that already did this job
    _device: object = field(default=None, repr=False)

    @property
    def device(self):
        """The resolved :class:`ascend_lab.device.Device`; resolved (and tagged) on first use."""
        if self._device is None:
            from ascend_lab.device import resolve_device

            self._device = resolve_device(self.cfg.device)
            self.tracker.set_tags({"device": str(self._device.torch_device), "device.reason": self._device.reason})
            log.info("device: %s (%s)", self._device.torch_device, self._device.reason)
        return self._device

    def path(self, configured: str | Path) -> Path:
        """A configured path; relative ones are taken from the launch directory."""
        path = Path(configured).expanduser()
        return path if path.is_absolute() else self.launch_dir / path


def _hydra_runtime() -> tuple[Path, Path, bool, Path | None, str, str, str | None]:
    """(launch dir, output dir, multirun?, sweep dir, job name, override dirname, job num)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # called outside @hydra.main (tests composing by hand)
        return Path.cwd(), Path.cwd(), False, None, "ascend_lab", "", None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return (Path(hc.runtime.cwd), Path(hc.runtime.output_dir), multirun,
            Path(hc.sweep.dir).resolve() if multirun else None, hc.job.name, hc.job.override_dirname,
            str(hc.job.num) if multirun else None)


@contextmanager
def job_context(cfg: AppConfig, raw_cfg: DictConfig) -> Iterator[JobContext]:
    launch_dir, output_dir, multirun, sweep_dir, job_name, override_dirname, job_num = _hydra_runtime()
    check_job_folders(cfg, launch_dir)  # before anything is created or recorded
    if not cfg.tracking.enabled:
        yield JobContext(cfg, Tracker(), launch_dir, output_dir)
        return

    parent_run_id = None
    sweep = read_sweep_file(sweep_dir) if sweep_dir else None
    if sweep is not None:
        store = Store(sweep["tracking_uri"], sweep["experiment_id"])
        parent_run_id = sweep["parent_run_id"]
    else:
        store = prepare_store(cfg.tracking, launch_dir)
    digest = config_hash(raw_cfg)
    if cfg.tracking.skip_finished:
        finished = find_finished_run(store, digest)
        if finished is not None:
            if parent_run_id is not None:
                record_skipped_job(store, parent_run_id, job_num, finished)
            print(f"Skipped: this config ({CONFIG_HASH_TAG}={digest}) already has the FINISHED MLflow run "
                  f"{finished}; drop tracking.skip_finished to run it again.")
            yield JobContext(cfg, Tracker(), launch_dir, output_dir, skipped_run_id=finished)
            return
    task = cfg.task.value
    run_name = cfg.tracking.run_name or "-".join(filter(None, [task, override_dirname]))[:250]
    tags = {"task": task, "output_dir": str(output_dir), CONFIG_HASH_TAG: digest, **environment_tags(launch_dir)}
    if job_num is not None:
        tags["job_num"] = job_num
    tracker = open_run(store, run_name, tags, parent_run_id)
    print(f"MLflow run {tracker.run_id} ({run_name}) in {store.uri}")
    try:
        with ending(tracker):
            tracker.log_params(config_params(raw_cfg))
            tracker.log_dict(_plain(raw_cfg), "config.yaml")
            hydra_dir = output_dir / ".hydra"
            if hydra_dir.is_dir():
                tracker.log_artifact(hydra_dir, "hydra")
            try:
                yield JobContext(cfg, tracker, launch_dir, output_dir)
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
