"""The entry point: ``python -m ascend_lab.run [overrides]`` (console script ``ascend-lab``).

Hydra composes conf/ (the checkout's, else the copy packaged as ``ascend_lab.conf``) with the
command-line overrides; :func:`run_job` validates the result, opens the job's tracking run and
dispatches ``task``. Heavy libraries are imported by the task that needs them.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
from pathlib import Path
from typing import Sequence

import hydra
from omegaconf import DictConfig

from ascend_lab.cli import override_problem, quote_for_hydra, user_errors_reported_plainly
from ascend_lab.config import TASK_GROUPS, Task, register_configs, validate

_CHECKOUT_CONF = Path(__file__).resolve().parent.parent / "conf"
# A checkout (editable install or `python -m` from the repo) uses its conf/ directly; an installed
# wheel uses the copy shipped as the ascend_lab.conf package.
CONFIG_PATH = str(_CHECKOUT_CONF) if (_CHECKOUT_CONF / "config.yaml").is_file() else "pkg://ascend_lab.conf"

# task → module whose `run(cfg, ctx)` does the work; imported only when chosen.
TASK_MODULES = {task: f"ascend_lab.tasks.{task.value}" for task in Task}

register_configs()


log = logging.getLogger("ascend_lab.run")  # not __main__ under python -m
# Groups that say how a job runs or is recorded, never what it computes, and the root keys every task
# reads: an override of them is never out of place.
_READ_BY_EVERY_TASK = ("task", "seed", "tracking", "telemetry", "profile", "search", "hydra")
_warned: set[str] = set()


def unread_group_overrides(task: Task, overrides: Sequence[str]) -> list[str]:
    """One warning per command-line override of a group ``task`` does not read (``TASK_GROUPS``).

    Such an override changes nothing in the job (``task=doctor mnist.lr=0.5`` trains nothing), so a user
    who believes it took effect should hear otherwise. ``overrides`` are Hydra's strings as given
    (``HydraConfig.get().overrides.task``); a group selection (``model=...``) counts like its keys.
    """
    read = TASK_GROUPS[task]
    warnings = []
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0].split("@")[0].strip()
        group = re.split(r"[./]", key, maxsplit=1)[0]
        if group in _READ_BY_EVERY_TASK or group in read:
            continue
        readers = [t.value for t, groups in TASK_GROUPS.items() if group in groups]
        warnings.append(f"{override} has no effect: task={task.value} reads only the {_listed(read)} groups"
                        + (f" ({group} is read by task {_listed(readers, 'or')})" if readers else ""))
    return warnings


def _listed(words: Sequence[str], last: str = "and") -> str:
    return ", ".join(words[:-1]) + f" {last} {words[-1]}" if len(words) > 1 else "".join(words)


def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time this process sees it (a sweep's jobs share overrides)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def run_job(cfg: DictConfig) -> object:
    """Validate, open the job's tracking run, run the task; the run ends FINISHED/FAILED/KILLED."""
    app_cfg = validate(cfg)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():  # tests may call run_job on a config composed by hand
        for message in unread_group_overrides(app_cfg.task, HydraConfig.get().overrides.task):
            _warn_once(message)
    from ascend_lab.context import job_context

    with job_context(app_cfg, cfg) as ctx:
        if ctx.skipped_run_id is not None:  # resume: this config already finished
            return None
        task_module = importlib.import_module(TASK_MODULES[app_cfg.task])
        result = task_module.run(app_cfg, ctx)
        from ascend_lab.tuning.objective import job_value

        return job_value(app_cfg, result, ctx.tracker)  # an automatic search's trials return one number


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _hydra_main(cfg: DictConfig) -> object:
    return run_job(cfg)


def main() -> None:
    argv, notes = quote_for_hydra(sys.argv[1:])
    for note in notes:
        print(note, file=sys.stderr)
    sys.argv[1:] = argv  # Hydra reads its arguments from sys.argv
    problem = override_problem(argv)
    if problem is not None:
        print(problem, file=sys.stderr)
        sys.exit(1)
    try:
        with user_errors_reported_plainly():
            _hydra_main()
    except KeyboardInterrupt:
        from ascend_lab.tracking import SweepCallback

        # The job's run was already ended KILLED; the sweep parent is closed KILLED at exit.
        SweepCallback.interrupted = True
        print("Interrupted: open MLflow runs are ended KILLED; everything logged so far is kept.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
