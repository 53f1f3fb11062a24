"""How the command line meets Hydra: override values quoted for Hydra's grammar, malformed overrides named,
and user errors reported as one plain message.

Chinese text is the common case for quoting (``benchmark.prompt=你好,昇腾!``): Hydra's override grammar takes
such characters only in quotes (https://hydra.cc/docs/advanced/override_grammar/basic/), so
:func:`quote_for_hydra` quotes a value Hydra rejects where it is plainly one string, and :func:`override_problem`
names the first override that is still malformed, with the quoted form(s) to copy.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import sys
from typing import Callable, Iterator

from ascend_lab.errors import AscendLabError

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

    Why a private function is wrapped: Hydra 1.3 offers no public hook for how it reports an error. Its
    ``hydra._internal.utils.run_and_report`` prints every exception (composition errors included) with the
    HYDRA_FULL_ERROR line, and the one switch, the ``HYDRA_FULL_ERROR`` environment variable, turns its
    report off for crashes too (facebookresearch/hydra issues #2590 and #2923; PR #3317, after 1.3, hands
    a task's exceptions to a custom ``sys.excepthook``, still not the composition's). So ``run_and_report``
    is wrapped for the duration, here only. Should a Hydra release drop that function, user errors get
    Hydra's plain report again (still exit status 1).
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
