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


# Hydra's flags that take a value (the value is not an override).
_VALUE_FLAGS = ("-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd",
                "--config-dir", "--experimental-rerun")
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
GRAMMAR_URL = "https://hydra.cc/docs/1.2/advanced/override_grammar/basic"


def command_line_overrides(argv: list[str]) -> list[str]:
    overrides, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUE_FLAGS or (arg in ("-i", "--info") and i + 1 < len(argv)
                                            and argv[i + 1] in _INFO_CHOICES)
        else:
            overrides.append(arg)
    return overrides


def override_problem(argv: list[str]) -> str | None:
    """What is wrong with the first malformed override, naming it (Hydra's own parse errors do not
    always say which override failed, and ``=4`` gets a traceback from it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for arg in command_line_overrides(argv):
        if arg.lstrip("+~").startswith("="):
            return (f"Invalid override {arg!r}: no key before '='. Overrides are key=value, e.g. "
                    "benchmark.batch_size=4; `--help` lists the groups and `--cfg job` prints every key.")
        try:
            parser.parse_override(arg)
        except HydraException as exc:
            return (f"Invalid override {arg!r}: {exc}. Overrides are key=value; quote values with brackets, "
                    f"commas or spaces as a whole argument, e.g. 'atc.dynamic_dims=[\"1,16\",\"4,16\"]' "
                    f"(grammar: {GRAMMAR_URL}).")
    return None


def main() -> None:
    problem = override_problem(sys.argv[1:])
    if problem is not None:
        print(problem, file=sys.stderr)
        sys.exit(1)
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
