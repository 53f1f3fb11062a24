"""Finding the Ascend CANN toolchain on this host.

Locations follow the CANN install guide: ``set_env.sh`` under the toolkit root (root install
``/usr/local/Ascend/ascend-toolkit``, user install ``~/Ascend/ascend-toolkit``, CANN ≥ 8.5
``/usr/local/Ascend/cann``, runtime-only ``nnrt``/``nnae``), ``/etc/Ascend/ascend_cann_install.info``
naming ``Install_Path``, and the version in ``<arch>-linux/ascend_toolkit_install.info``.
Pure discovery: nothing here loads the environment or imports Ascend libraries at import time.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

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
        roots += [base / "ascend-toolkit", base / "cann", base / "nnrt", base / "nnae"]
    return list(dict.fromkeys(roots))


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


def find_atc(toolkit_home: str | None = None) -> Path | None:
    """``atc`` on PATH, else under a toolkit root's ``latest/bin`` or ``bin``."""
    on_path = shutil.which("atc")
    if on_path:
        return Path(on_path)
    for root in candidate_toolkit_roots(toolkit_home):
        for candidate in (root / "latest" / "bin" / "atc", root / "bin" / "atc", root / "latest" / "atc" / "bin" / "atc"):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def acl_importable() -> tuple[bool, str]:
    """Whether pyACL (``import acl``) loads, and the reason when it does not."""
    try:
        import acl  # noqa: F401
    except Exception as exc:  # ImportError, or OSError from a missing libascendcl.so
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


@dataclass
class NpuSmi:
    path: Path | None
    names: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def soc_version(self) -> str | None:
        """ATC --soc_version for the first chip (`npu-smi info` Name prefixed with Ascend)."""
        return f"Ascend{self.names[0]}" if self.names else None


def query_npu_smi(timeout_s: float = 10.0) -> NpuSmi:
    """Chip names from ``npu-smi info`` (e.g. ``910B3``, ``310P3``), if the tool exists."""
    path = shutil.which("npu-smi")
    if path is None:
        return NpuSmi(path=None)
    try:
        out = subprocess.run([path, "info"], capture_output=True, text=True, timeout=timeout_s).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return NpuSmi(path=Path(path), error=str(exc))
    names = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("| ").split("|")]
        tokens = cells[0].split() if cells and cells[0] else []
        # Device rows read "| 0     910B3     | OK | ..."; the chip name is the second token.
        if len(tokens) >= 2 and tokens[0].isdigit() and tokens[1][:3] in ("310", "910"):
            names.append(tokens[1])
    return NpuSmi(path=Path(path), names=names)


def missing_toolkit_message(what: str, toolkit_home: str | None = None) -> str:
    looked = "\n  ".join(str(p) for p in set_env_locations(toolkit_home))
    return (
        f"{what}: the Ascend CANN toolkit is not installed or its environment is not loaded.\n"
        f"Load it with `source <toolkit>/set_env.sh`, or set atc.toolkit_home=<folder with set_env.sh>.\n"
        f"Looked for set_env.sh at:\n  {looked}"
    )
