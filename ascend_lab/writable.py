"""Output folders that cannot be written fail at once, naming the key and the path.

Hydra creates the job's folder (``hydra.run.dir`` / ``hydra.sweep.dir``) before any ascend_lab
code runs and reports a failure there as a traceback, so :class:`OutputFoldersCallback` (first in
``conf/config.yaml``'s ``hydra.callbacks``) checks it before Hydra and the tracking callback write
anything. :func:`check_job_folders` does the same for the caches a job writes into.
Nothing is created by a check.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ascend_lab.errors import AscendLabError


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be created (or written), or None when it can."""
    existing = folder
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder" if existing.exists() else f"{existing} cannot be used"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def require_writable(key: str, value: object, folder: Path) -> None:
    problem = folder_problem(folder)
    if problem is not None:
        raise AscendLabError(
            f"Cannot write {key}={value}: {problem}. Move or delete it, point {key} at a writable folder, "
            "or launch from another directory.")


def check_job_folders(cfg, launch_dir: Path) -> None:
    """The caches this job may write into (``cfg`` is the validated AppConfig)."""
    for key, value in (("export.cache_dir", cfg.export.cache_dir), ("atc.output_dir", cfg.atc.output_dir)):
        path = Path(value).expanduser()
        require_writable(key, value, path if path.is_absolute() else launch_dir / path)


class OutputFoldersCallback(Callback):
    """Checks the run or sweep folder Hydra is about to create; stops with exit status 1 if it cannot."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            value = str(config.hydra.run.dir if key == "hydra.run.dir" else config.hydra.sweep.dir)
        except Exception:  # an interpolation only Hydra's job setup can resolve: leave it to Hydra
            return
        try:
            require_writable(key, value, Path(value).expanduser().absolute())
        except AscendLabError as exc:  # Hydra turns a callback's exception into a warning and goes on
            print(str(exc), file=sys.stderr)
            raise SystemExit(1) from exc
