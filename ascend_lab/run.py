"""The entry point: ``python -m ascend_lab.run [overrides]`` (console script ``ascend-lab``).

Hydra composes conf/ (the checkout's, else the copy packaged as ``ascend_lab.conf``) with the
command-line overrides; :func:`run_job` validates the result, opens the job's tracking run and
dispatches ``task``. Heavy libraries are imported by the task that needs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ascend_lab import explain, quiet
from ascend_lab.config import TASK_GROUPS, AppConfig, Task, validate
from ascend_lab.errors import AscendLabError
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
        # A group outside the schema is a preset (+hparams_search=..., +experiment=...): it sets keys of other
        # groups, and composing it checked them.
        if group in _READ_BY_EVERY_TASK or group in read or group not in _SCHEMA_GROUPS:
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
        for message in unread_group_overrides(app_cfg.task, HydraConfig.get().overrides.task):
            _warn_once(message)
    from ascend_lab.context import job_context

    with job_context(app_cfg, cfg, started_at) as ctx:
        if ctx.skipped_run_id is not None:  # resume: this config already finished
            return None
        task_module = importlib.import_module(TASK_MODULES[app_cfg.task])
        result = task_module.run(app_cfg, ctx)
        from ascend_lab.tuning.objective import job_value

        return job_value(app_cfg, result, ctx.tracker)  # an automatic search's trials return one number


def _hydra_main() -> object:
    """Hydra's entry point around :func:`run_job` (Hydra's launchers hand the config store to their workers)."""
    import hydra

    register_configs()
    return hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")(run_job)()


# Hydra's flags that take a value (the value is not an override).
_VALUE_FLAGS = ("-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd",
                "--config-dir", "--experimental-rerun")
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
_MULTIRUN_FLAGS = ("-m", "--multirun")
GRAMMAR_URL = "https://hydra.cc/docs/1.2/advanced/override_grammar/basic"
# Hydra's sweep and cast functions: a value starting with one of them is a function call, not text.
_GRAMMAR_FUNCTIONS = re.compile(r"^\s*(choice|range|interval|glob|sort|shuffle|tag|int|float|str|bool|json_str)\s*\(")
GENERIC_QUOTING_ADVICE = ("Overrides are key=value; quote values with brackets, commas or spaces as a whole argument, "
                          "e.g. 'atc.dynamic_dims=[\"1,16\",\"4,16\"]'")


def _override_positions(argv: list[str]) -> list[int]:
    """Indices of the overrides in ``argv``: everything that is neither a flag nor a flag's value."""
    positions, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in _VALUE_FLAGS or (arg in ("-i", "--info") and i + 1 < len(argv)
                                            and argv[i + 1] in _INFO_CHOICES)
        else:
            positions.append(i)
    return positions


def command_line_overrides(argv: list[str]) -> list[str]:
    return [argv[i] for i in _override_positions(argv)]


def is_multirun(argv: list[str]) -> bool:
    """Whether a comma in an override separates sweep values (``-m``, or ``hydra.mode=MULTIRUN``)."""
    return (any(arg in _MULTIRUN_FLAGS for arg in argv)
            or any(o.replace(" ", "") == "hydra.mode=MULTIRUN" for o in command_line_overrides(argv)))


@functools.lru_cache(maxsize=1)
def _override_parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse_override(arg: str):
    """Hydra's parse of one override, or None where its grammar rejects it."""
    from hydra.errors import HydraException

    try:
        return _override_parser().parse_override(arg)
    except HydraException:
        return None


def hydra_quoted(value: str) -> str:
    """``value`` as one quoted string of Hydra's grammar.

    Double quotes by default: they survive inside the shell's single quotes, the form we print to copy.
    Inside quotes Hydra reads a backslash as an escape only before a quote or at the end, so exactly
    those backslashes are doubled and the quote character itself is escaped.
    """
    quote = "'" if '"' in value and "'" not in value else '"'

    def escape(match: re.Match) -> str:
        backslashes, closing = match.group(1), match.group(2)
        return backslashes * 2 + ("\\" + closing if closing else "")

    return quote + re.sub(rf"(\\*)({quote}|$)", escape, value) + quote


def _plain_text(value: str) -> bool:
    """Whether ``value`` reads as text: not a list, dict, ${...} interpolation or grammar function, and not
    an attempt at Hydra quoting gone wrong (``'abc``), which quoting again would turn into a stray quote."""
    stripped = value.strip()
    return not (stripped.startswith(("[", "{", "'", '"')) or "${" in value or _GRAMMAR_FUNCTIONS.match(value))


def quoted_override(arg: str) -> str | None:
    """``arg`` (key=value) with the value quoted for Hydra, if Hydra then reads exactly ``value`` as one
    plain string; None where that is not so (no key, structured value, or the key itself is malformed)."""
    key, sep, value = arg.partition("=")
    if not sep or not key.lstrip("+~") or not _plain_text(value):
        return None
    candidate = f"{key}={hydra_quoted(value)}"
    parsed = parse_override(candidate)
    if parsed is None or parsed.is_sweep_override() or parsed.value() != value:
        return None
    return candidate


def _sweep_form(arg: str) -> str | None:
    """``arg`` as a sweep over its comma-separated values, each quoted; None if that does not parse back."""
    key, _, value = arg.partition("=")
    pieces = [piece.strip() for piece in value.split(",")]
    candidate = f"{key}=" + ",".join(hydra_quoted(piece) for piece in pieces)
    parsed = parse_override(candidate)
    if parsed is None or not parsed.is_sweep_override():
        return None
    values = getattr(parsed.value(), "list", None) or []
    return candidate if [getattr(v, "text", v) for v in values] == pieces else None


def quote_for_hydra(argv: list[str]) -> tuple[list[str], list[str]]:
    """Quote the override values Hydra's grammar rejects but that are plainly one string.

    Chinese text (``benchmark.prompt=你好,昇腾!``) is the common case: Hydra takes such characters only in
    quotes. An override Hydra accepts as given is never touched (``benchmark.batch_size=1,4,8`` under -m
    stays a sweep); under -m a rejected value with a comma is left alone too, since the comma may
    separate sweep values: :func:`override_problem` then prints both quoted forms to copy.
    Returns the new argv and one note per rewritten override.
    """
    multirun = is_multirun(argv)
    rewritten, notes = list(argv), []
    for i in _override_positions(argv):
        arg = argv[i]
        if parse_override(arg) is not None or (multirun and "," in arg.partition("=")[2]):
            continue
        quoted = quoted_override(arg)
        if quoted is not None:
            rewritten[i] = quoted
            key = arg.partition("=")[0].lstrip("+~")
            notes.append(f"note: quoted {key}'s value for Hydra's override grammar, which takes such characters "
                         f"only in quotes: {shlex.quote(quoted)}")
    return rewritten, notes


def quoting_advice(arg: str, multirun: bool) -> str:
    """How to write ``arg`` so Hydra takes it: the exact quoted form(s) to copy where the value is text."""
    quoted = quoted_override(arg)
    if quoted is None:
        return GENERIC_QUOTING_ADVICE
    if multirun and "," in arg.partition("=")[2]:
        sweep = _sweep_form(arg)
        return ("Under -m a comma separates sweep values, so the value is not quoted for you. As one string: "
                f"{shlex.quote(quoted)}" + (f"; as a sweep over the comma-separated values: {shlex.quote(sweep)}"
                                           if sweep else ""))
    return f"Quote the value as one string: {shlex.quote(quoted)}"


def override_problem(argv: list[str]) -> str | None:
    """What is wrong with the first malformed override, naming it (Hydra's own parse errors do not
    always say which override failed, and ``=4`` gets a traceback from it)."""
    from hydra.errors import HydraException

    multirun = is_multirun(argv)
    for arg in command_line_overrides(argv):
        if arg.lstrip("+~").startswith("="):
            return (f"Invalid override {arg!r}: no key before '='. Overrides are key=value, e.g. "
                    "benchmark.batch_size=4; `--help` lists the groups and `--cfg job` prints every key.")
        try:
            _override_parser().parse_override(arg)
        except HydraException as exc:
            return f"Invalid override {arg!r}: {exc}. {quoting_advice(arg, multirun)} (grammar: {GRAMMAR_URL})."
    return None


def user_error_message(exc: BaseException) -> str | None:
    """The whole report of a user error, or None for a crash.

    User errors are ours (:class:`AscendLabError`) and Hydra's compact ones (an unknown config option or
    key, a value of the wrong type: a message without a traceback, followed by the OmegaConf detail).
    """
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, AscendLabError):
        return str(exc)
    if isinstance(exc, CompactHydraException):
        cause = exc.__cause__
        return str(exc) + (os.linesep + str(cause) if isinstance(cause, OmegaConfBaseException) else "")
    return None


def _exit_on_user_error(func: Callable[[], object]) -> object:
    """Run ``func``; a user error prints its message and exits 1, as the last thing printed.

    Hydra ends every error it reports with "Set the environment variable HYDRA_FULL_ERROR=1 for a complete
    stack trace", which promises a traceback where a user error has none worth reading. With
    HYDRA_FULL_ERROR=1 set, the error goes on to Hydra, which then shows the full traceback as asked.
    """
    try:
        return func()
    except Exception as exc:  # noqa: BLE001 - only user errors stop here; the rest is re-raised as is
        message = user_error_message(exc)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":  # what Hydra's own check reads
            raise
        print(message, file=sys.stderr)
        sys.exit(1)


@contextlib.contextmanager
def user_errors_reported_plainly() -> Iterator[None]:
    """Route everything Hydra runs and reports (composing the config, the job, a sweep's re-raise of its
    first failed job) through :func:`_exit_on_user_error`; any other exception is a crash and keeps
    Hydra's report (traceback and the HYDRA_FULL_ERROR line).

    Hydra has no hook for this: its ``run_and_report`` is wrapped for the duration. Should a Hydra
    release drop that function, user errors get Hydra's plain report again (still exit status 1).
    """
    from hydra._internal import utils as hydra_utils

    original = getattr(hydra_utils, "run_and_report", None)
    if original is None:
        yield
        return
    hydra_utils.run_and_report = lambda func: original(lambda: _exit_on_user_error(func))
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


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
