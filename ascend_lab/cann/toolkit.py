"""Finding the Ascend CANN toolkit on this host.

Locations follow the CANN install guide: ``set_env.sh`` under the toolkit root (root install
``/usr/local/Ascend/ascend-toolkit``, user install ``~/Ascend/ascend-toolkit``, CANN ≥ 8.5
``/usr/local/Ascend/cann`` and its versioned roots such as ``/usr/local/Ascend/cann-8.5.0``,
runtime-only ``nnrt``/``nnae``), ``/etc/Ascend/ascend_cann_install.info`` naming ``Install_Path``,
and the version in ``<arch>-linux/ascend_toolkit_install.info``.

Discovery is pure; :func:`load_environment` is the one place that runs ``set_env.sh`` (once, capturing
the environment it sets, which the ``atc`` subprocess then gets). Nothing here imports Ascend libraries
at import time.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ascend_lab.errors import ToolchainError

CANN_INSTALL_INFO = Path("/etc/Ascend/ascend_cann_install.info")


def candidate_toolkit_roots(toolkit_home: str | None = None) -> list[Path]:
    """Folders that may hold ``set_env.sh``, most specific first."""
    if toolkit_home:
        return [Path(toolkit_home).expanduser()]
    roots: list[Path] = []
    if CANN_INSTALL_INFO.is_file():
        for line in CANN_INSTALL_INFO.read_text(errors="replace").splitlines():
            if line.startswith("Install_Path="):
                base = Path(line.split("=", 1)[1].strip())
                roots += [base / "ascend-toolkit", base / "cann", base]
    home = Path.home() / "Ascend"
    for base in (Path("/usr/local/Ascend"), home):
        # CANN 8.5 installs side by side as cann-<version> (newest first) next to the cann link.
        versioned = sorted(base.glob("cann-*"), key=lambda p: _version_key(p.name[len("cann-"):]), reverse=True) \
            if base.is_dir() else []
        roots += [base / "ascend-toolkit", base / "cann", *versioned, base / "nnrt", base / "nnae"]
    return list(dict.fromkeys(roots))


def _version_key(text: str) -> tuple:
    """8.5.0 > 8.0.RC3: numeric parts compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[.-]", text))


def set_env_locations(toolkit_home: str | None = None) -> list[Path]:
    return [root / "set_env.sh" for root in candidate_toolkit_roots(toolkit_home)]


def find_set_env(toolkit_home: str | None = None) -> Path | None:
    return next((p for p in set_env_locations(toolkit_home) if p.is_file()), None)


def toolkit_version(toolkit_home: str | None = None) -> str | None:
    """CANN version from ``ascend_toolkit_install.info`` (``version=8.0.RC3``), if installed."""
    arch = f"{platform.machine()}-linux"
    for root in candidate_toolkit_roots(toolkit_home):
        for info in (root / "latest" / arch / "ascend_toolkit_install.info", root / arch / "ascend_toolkit_install.info",
                     root / "latest" / "ascend_toolkit_install.info"):
            if info.is_file():
                for line in info.read_text(errors="replace").splitlines():
                    if line.strip().startswith("version="):
                        return line.split("=", 1)[1].strip()
    return None


def find_tool(name: str, toolkit_home: str | None = None) -> Path | None:
    """A CANN command-line tool (``atc``, ``aoe``) on PATH, else under a toolkit root's bin folders."""
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    for root in candidate_toolkit_roots(toolkit_home):
        for candidate in (root / "latest" / "bin" / name, root / "bin" / name, root / "latest" / name / "bin" / name):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def find_atc(toolkit_home: str | None = None) -> Path | None:
    return find_tool("atc", toolkit_home)


@dataclass
class CannEnvironment:
    """Where a CANN tool and ``set_env.sh`` are, and the environment to run the tool in."""

    tool: str
    path: Path | None
    set_env: Path | None
    env: dict[str, str] | None = None  # None: the current environment
    looked: list[Path] = field(default_factory=list)  # the set_env.sh locations searched

    def describe(self, sourced: bool) -> str:
        if self.set_env is not None:
            how = "sourced" if sourced else "would be sourced"
            where = f"set_env.sh: {self.set_env} ({how}: bash -c 'source {self.set_env} && env -0')"
        else:
            where = ("set_env.sh: none found; running with the current environment (looked at: "
                     + ", ".join(map(str, self.looked)) + ")")
        return f"{where}\n{self.tool}: {self.path if self.path else 'not found'}"


def locate(tool: str, toolkit_home: str | None = None) -> CannEnvironment:
    """Where set_env.sh and ``tool`` are, without running anything (what a dry run reports)."""
    return CannEnvironment(tool=tool, path=find_tool(tool, toolkit_home), set_env=find_set_env(toolkit_home),
                           looked=set_env_locations(toolkit_home))


def capture_set_env(set_env: Path, timeout_s: float = 120.0) -> dict[str, str]:
    """The environment after ``source set_env.sh``, captured once (its own output goes to stderr)."""
    try:
        proc = subprocess.run(["bash", "-c", 'source "$1" 1>&2 && env -0', "bash", str(set_env)],
                              capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"could not load the CANN environment from {set_env}: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise ToolchainError(f"`source {set_env}` failed (exit status {proc.returncode}); fix the CANN install or "
                             f"point atc.toolkit_home elsewhere.\n{tail}")
    env = {}
    for item in proc.stdout.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep and key:
            env[key] = value
    return env


def load_environment(tool: str, toolkit_home: str | None = None) -> CannEnvironment:
    """CANN's environment from set_env.sh when one is found, else the current one with ``tool`` on PATH."""
    located = locate(tool, toolkit_home)
    if located.set_env is None:
        return located
    env = capture_set_env(located.set_env)
    on_path = shutil.which(tool, path=env.get("PATH", ""))
    return CannEnvironment(tool=tool, path=Path(on_path) if on_path else located.path, set_env=located.set_env,
                           env=env, looked=located.looked)


def acl_importable() -> tuple[bool, str]:
    """Whether pyACL (``import acl``) loads, and the reason when it does not."""
    try:
        import acl  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a missing libascendcl.so
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


def missing_toolkit_message(what: str, toolkit_home: str | None = None, alternative: str | None = None) -> str:
    """One line saying what is missing, then the fix and where we looked, indented (``alternative``: another way)."""
    lines = [f"{what}: the Ascend CANN toolkit is not installed or its environment is not loaded.",
             "  load it: source <toolkit>/set_env.sh, or set atc.toolkit_home=<folder with set_env.sh>",
             "  looked for set_env.sh at: " + ", ".join(str(p) for p in set_env_locations(toolkit_home))]
    if alternative:
        lines.append(f"  or {alternative}")
    return "\n".join(lines)
