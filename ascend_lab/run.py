"""The entry point: ``python -m ascend_lab.run [overrides]`` (console script ``ascend-lab``).

Hydra composes conf/ (the checkout's, else the copy packaged as ``ascend_lab.conf``) with the
command-line overrides; :func:`run_job` validates the result, opens the job's tracking run and
dispatches ``task``. Heavy libraries are imported by the task that needs them.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ascend_lab import explain, quiet
from ascend_lab.cli import command_line_overrides, override_problem, quote_for_hydra, user_errors_reported_plainly
from ascend_lab.config import (
    ATC_KEYS_READ_WITHOUT_COMPILING, COMPILING_TASKS, TASK_GROUPS, AppConfig, Task, validate,
)
from ascend_lab.config.runtime import RuntimeConfig
from ascend_lab.runtimes.registry import register_configs

if TYPE_CHECKING:  # Hydra loads when a job is composed, after `--help` has had its chance to answer alone
    from omegaconf import DictConfig

_CHECKOUT_CONF = Path(__file__).resolve().parent.parent / "conf"
# A checkout (editable install or `python -m` from the repo) uses its conf/ directly; an installed
# wheel uses the copy shipped as the ascend_lab.conf package.
CONFIG_PATH = str(_CHECKOUT_CONF) if (_CHECKOUT_CONF / "config.yaml").is_file() else "pkg://ascend_lab.conf"

# task → module whose `run(cfg, ctx)` does the work; imported only when chosen.
TASK_MODULES = {task: f"ascend_lab.tasks.{task.value}" for task in Task}

log = logging.getLogger("ascend_lab.run")  # not __main__ under python -m
# Groups that say how a job runs or is recorded, never what it computes, and the root keys every task
# reads: an override of them is never out of place.
_READ_BY_EVERY_TASK = ("task", "seed", "verbose", "tracking", "telemetry", "profile", "search", "hydra")
_warned: set[str] = set()
_SCHEMA_GROUPS = {f.name for f in dataclasses.fields(AppConfig)}
# When the program started (wall clock), for the first job's honest duration; None once taken.
_program_started: float | None = None


def unread_group_overrides(task: Task, overrides: Sequence[str], runtime: RuntimeConfig | None = None) -> list[str]:
    """One warning per command-line override of a group ``task`` does not read (``TASK_GROUPS``), or of an atc key
    in a job that compiles nothing.

    Such an override changes nothing in the job (``task=doctor mnist.lr=0.5`` trains nothing, ``task=bench
    runtime=onnxruntime atc.soc_version=Ascend910B`` runs no .om), so a user who believes it took effect should
    hear otherwise. ``overrides`` are Hydra's strings as given (``HydraConfig.get().overrides.task``); a group
    selection (``model=...``) counts like its keys. ``runtime``: the job's runtime config (None: runtime=auto).
    """
    read = TASK_GROUPS[task]
    artifact = type(runtime).artifact if runtime is not None else None  # None: runtime=auto, which may pick acl
    compiles = task in COMPILING_TASKS or ("runtime" in read and artifact in (None, "om"))
    warnings = []
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0].split("@")[0].strip()
        group = re.split(r"[./]", key, maxsplit=1)[0]
        # A group outside the schema is a preset (+hparams_search=..., +experiment=...): it sets keys of other
        # groups, and composing it checked them.
        if group in _READ_BY_EVERY_TASK or group not in _SCHEMA_GROUPS:
            continue
        if group in read:
            if group == "atc" and not compiles and key.partition(".")[2] not in ATC_KEYS_READ_WITHOUT_COMPILING:
                mode = f"task={task.value}" + (f" with runtime={runtime.name}" if "runtime" in read and runtime else "")
                still_read = _listed([f"atc.{k}" for k in ATC_KEYS_READ_WITHOUT_COMPILING])
                compilers = _listed([t.value for t in COMPILING_TASKS], "or")
                warnings.append(f"{override} has no effect: {mode} compiles no .om, and of the atc group reads only "
                                f"{still_read} (atc is read by task {compilers}, and with runtime=acl or auto)")
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
    global _program_started
    started_at, _program_started = _program_started or time.time(), None
    app_cfg = validate(cfg)
    quiet.apply(app_cfg.verbose)
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():  # tests may call run_job on a config composed by hand
        for message in unread_group_overrides(app_cfg.task, HydraConfig.get().overrides.task, app_cfg.runtime):
            _warn_once(message)
    from ascend_lab.context import job_context
    from ascend_lab.device_lock import claimed

    with claimed(app_cfg, app_cfg.runtime.name) as (app_cfg, device_claim), \
            job_context(app_cfg, cfg, started_at) as ctx:
        if ctx.skipped_run_id is not None:  # resume: this config already finished
            return None
        if device_claim is not None:  # device.index=auto: the device this job holds
            ctx.tracker.log_params({"device.claimed_index": device_claim.index})
            ctx.tracker.set_tags(device_claim.tags())
        task_module = importlib.import_module(TASK_MODULES[app_cfg.task])
        result = task_module.run(app_cfg, ctx)
        from ascend_lab.tuning.objective import job_value

        return job_value(app_cfg, result, ctx.tracker)  # an automatic search's trials return one number


def _hydra_main() -> object:
    """Hydra's entry point around :func:`run_job` (Hydra's launchers hand the config store to their workers)."""
    import hydra

    register_configs()
    return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")(run_job)()


def _process_started() -> float:
    """The wall-clock time this process started where it runs this program (``python -m ascend_lab.run`` or the
    ``ascend-lab`` script: the interpreter's start and the imports count), else now (a caller in-process)."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if program is not None and (program.name == "ascend-lab" or program.resolve() == Path(__file__).resolve()):
        import psutil

        return psutil.Process().create_time()
    return time.time()


def main() -> None:
    global _program_started
    _program_started = _process_started()
    if explain.help_asked(sys.argv[1:]):
        sys.exit(explain.print_help(sys.argv[1:]))
    quiet.apply(quiet.verbose_asked(command_line_overrides(sys.argv[1:])))
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
