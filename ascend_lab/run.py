"""The entry point: ``python -m ascend_lab.run [overrides]`` (console script ``ascend-lab``).

Hydra composes conf/ (the checkout's, else the copy packaged as ``ascend_lab.conf``) with the
command-line overrides; :func:`run_job` validates the result, opens the job's tracking run and
dispatches ``task``. Heavy libraries are imported by the task that needs them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ascend_lab.config import Task, register_configs, validate

_CHECKOUT_CONF = Path(__file__).resolve().parent.parent / "conf"
# A checkout (editable install or `python -m` from the repo) uses its conf/ directly; an installed
# wheel uses the copy shipped as the ascend_lab.conf package.
CONFIG_PATH = str(_CHECKOUT_CONF) if (_CHECKOUT_CONF / "config.yaml").is_file() else "pkg://ascend_lab.conf"

# task → module whose `run(cfg, ctx)` does the work; imported only when chosen.
TASK_MODULES = {task: f"ascend_lab.tasks.{task.value}" for task in Task}

register_configs()


def run_job(cfg: DictConfig) -> object:
    """Validate, open the job's tracking run, run the task; the run ends FINISHED/FAILED/KILLED."""
    app_cfg = validate(cfg)
    from ascend_lab.context import job_context

    with job_context(app_cfg, cfg) as ctx:
        if ctx.skipped_run_id is not None:  # resume: this config already finished
            return None
        task_module = importlib.import_module(TASK_MODULES[app_cfg.task])
        return task_module.run(app_cfg, ctx)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    return run_job(cfg)


def main() -> None:
    try:
        _hydra_main()
    except KeyboardInterrupt:
        from ascend_lab.tracking import SweepCallback

        # The job's run was already ended KILLED; the sweep parent is closed KILLED at exit.
        SweepCallback.interrupted = True
        print("Interrupted: open MLflow runs are ended KILLED; everything logged so far is kept.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
