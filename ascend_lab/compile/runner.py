"""Running ATC: the subprocess (streamed to the console and a log, killed as a process group on timeout)
and reading its outcome.

ATC's contract (CANN ATC reference: --output, hiascend atlasatcparam_16_0029): ``<output>.om`` or ``<output>_<os>_<arch>.om``
is written, success prints :data:`SUCCESS_LINE`, failures print ``E#####`` codes; the exit status is
not documented, so success needs all three signs.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ascend_lab.errors import AscendLabError, ToolchainError

SUCCESS_LINE = "ATC run success, welcome to the next use."
# Ascend error codes: E10001, E19010, EZ9999, EE1001 ...
ERROR_CODE = re.compile(r"\bE[0-9A-Z]{2}\d{3}\b")
LOG_TAIL_LINES = 25


class AtcError(AscendLabError):
    """ATC ran and failed (error codes, missing success line or output, timeout)."""


@dataclass
class CompileResult:
    returncode: int | None  # None when killed on timeout
    seconds: float
    log_path: Path
    timed_out: bool = False
    success_line: bool = False
    error_codes: list[str] = field(default_factory=list)
    tail: str = ""


def run_atc(argv: Sequence[str], env: Mapping[str, str] | None, timeout_s: float, log_path: Path,
            cwd: Path | None = None) -> CompileResult:
    """Run ATC in ``cwd``, streaming its output to the console and ``log_path``; on timeout kill its whole
    process group (ATC forks parallel kernel compilers)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    codes: dict[str, None] = {}
    seen_success = False
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log_file:
        log_file.write("$ " + shlex.join(argv) + "\n")
        log_file.flush()
        try:
            proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=dict(env) if env is not None else None,
                                    start_new_session=True, cwd=cwd)
        except OSError as exc:
            raise ToolchainError(f"cannot start {argv[0]}: {exc}") from exc

        def pump() -> None:
            nonlocal seen_success
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace")
                log_file.write(line)
                log_file.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
                tail.append(line.rstrip("\n"))
                seen_success = seen_success or SUCCESS_LINE in line
                codes.update(dict.fromkeys(ERROR_CODE.findall(line)))

        reader = threading.Thread(target=pump, name="atc-output", daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        except BaseException:  # Ctrl-C: ATC runs in its own session, so it would not see the signal
            _kill_group(proc.pid)
            raise
        finally:
            reader.join(timeout=10)
            if reader.is_alive():  # a leftover child still holds the pipe open
                _kill_group(proc.pid)
                reader.join(timeout=10)
            proc.stdout.close()
        seconds = time.monotonic() - start
        if timed_out:
            log_file.write(f"\n[ascend_lab] killed after {timeout_s:g} s (atc.timeout_s)\n")
    return CompileResult(returncode=None if timed_out else proc.returncode, seconds=seconds, log_path=log_path,
                         timed_out=timed_out, success_line=seen_success, error_codes=list(codes),
                         tail="\n".join(tail))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def find_om(output_prefix: Path) -> Path | None:
    """``<prefix>.om`` or ``<prefix>_<os>_<arch>.om`` (ATC adds the suffix on some hosts)."""
    output_prefix = Path(output_prefix)
    found = sorted(output_prefix.parent.glob(glob_escape(output_prefix.name) + "*.om"))
    exact = output_prefix.with_name(output_prefix.name + ".om")
    return exact if exact in found else (found[0] if found else None)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def check_result(result: CompileResult, output_prefix: Path, timeout_s: float) -> Path:
    """The .om ATC wrote, or an :class:`AtcError` quoting the log tail and error codes."""
    codes = f"error codes: {', '.join(result.error_codes)}\n" if result.error_codes else ""
    details = f"Full log: {result.log_path}\n{codes}--- last lines of the ATC log ---\n{result.tail}"
    if result.timed_out:
        raise AtcError(f"ATC timed out after {timeout_s:g} s (atc.timeout_s) and was killed with its process "
                       f"group; raise atc.timeout_s for large models.\n{details}")
    if result.returncode != 0:
        raise AtcError(f"ATC failed (exit status {result.returncode}).\n{details}")
    if not result.success_line:
        raise AtcError(f"ATC exited 0 but never printed {SUCCESS_LINE!r}; treating the compile as failed.\n{details}")
    om = find_om(output_prefix)
    if om is None:
        raise AtcError(f"ATC reported success but no {output_prefix}*.om exists.\n{details}")
    return om


