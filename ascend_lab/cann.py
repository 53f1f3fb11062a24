"""Finding the Ascend CANN toolchain on this host.

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
    """Chip names from ``npu-smi info`` (e.g. ``910B3``, ``310P3``), if the tool exists; on an A3 board,
    whose ``npu-smi info`` Name is the bare family, the name ``npu-smi info -t board`` gives."""
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
    board = board_chip_name(path, 0, timeout_s)
    if board is not None and names:
        names[0] = board
    return NpuSmi(path=Path(path), names=names)


def board_chip_name(npu_smi: str, device: int, timeout_s: float = 10.0) -> str | None:
    """The soc name from ``npu-smi info -t board -i <id> -c 0`` where it has an ``NPU Name`` (A3):
    ``Chip Name_NPU Name``, e.g. 910_9391 (hiascend atlasag_25_0080). None elsewhere: the board query
    prints ``Key : value`` lines, and only A3 boards add ``NPU Name`` (hiascend npusmi_009)."""
    try:
        out = subprocess.run([npu_smi, "info", "-t", "board", "-i", str(device), "-c", "0"], capture_output=True,
                             text=True, timeout=timeout_s).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    chip, npu = fields.get("chip name"), fields.get("npu name")
    if not chip or not npu or npu.upper() == "NA":
        return None
    return f"{chip.removeprefix('Ascend')}_{npu}"


# ------------------------------------------------------------------------------------------------
# npu-smi queries (telemetry, the environment snapshot, doctor's board table)
#
# Formats are the hiascend npu-smi reference pages (Atlas 200I A2 "re/npu" set; shared/reference/ascend.md §4):
# `npu-smi info` (npusmi_007: the table), `-t board -i id` (npusmi_008: Software Version = driver, Firmware
# Version), `-t power -i id [-c chip]` (npusmi_023/024: NPU Real-time Power(W)), `-t usages -i id [-c chip]`
# (npusmi_019/020: Aicore Usage Rate(%), Memory Capacity(MB) / Memory Usage Rate(%); A2/A3 servers print
# HBM Capacity(MB) / HBM Usage Rate(%) as well, as mindspore-lab/mindediting utils/tests.py reads them),
# `-t temp -i id [-c chip]` (npusmi_021/022: Temperature (C)). The all-chips form (`-i id` alone) prints
# "NPU ID" and "Chip Count", then one block per chip opened by "Chip ID", then an MCU block that ends with
# "Chip Name : MCU"; blocks are separated by blank lines. A value npu-smi cannot read is printed as NA.

NPU_SMI_NA = "NA"


@dataclass
class NpuChip:
    """One chip row pair of the `npu-smi info` table (the NPU row, then its chip row)."""

    npu_id: int
    chip_id: int
    name: str
    health: str
    power_w: float | None = None
    temp_c: float | None = None
    aicore_pct: float | None = None
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    hbm_used_mb: float | None = None
    hbm_total_mb: float | None = None
    bus_id: str | None = None


@dataclass
class NpuSmiOverview:
    """`npu-smi info`: the tool and driver versions of its header and every chip of the table."""

    path: Path | None
    npu_smi_version: str | None = None
    driver_version: str | None = None
    chips: list[NpuChip] = field(default_factory=list)
    error: str | None = None


def npu_smi_path() -> str | None:
    return shutil.which("npu-smi")


def _run_npu_smi(args: list[str], timeout_s: float) -> tuple[str | None, str | None]:
    """(stdout, None), or (None, why) when npu-smi is missing, hangs or fails."""
    path = npu_smi_path()
    if path is None:
        return None, "npu-smi not found on PATH"
    try:
        proc = subprocess.run([path, *args], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"`npu-smi {' '.join(args)}` took more than {timeout_s:g} s"
    except OSError as exc:
        return None, f"`npu-smi {' '.join(args)}` could not run: {exc}"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return None, f"`npu-smi {' '.join(args)}` exited with status {proc.returncode}: {tail[0]}"
    return proc.stdout, None


def _number(text: str | None) -> float | None:
    """A figure npu-smi printed, or None for NA / anything that is not a number."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value else None  # NaN is no figure


def _used_total(cells: list[str]) -> list[tuple[float | None, float | None]]:
    """The "used / total" pairs of a table cell, in order (Memory-Usage, then HBM-Usage where printed)."""
    pairs = []
    tokens = " ".join(cells).replace("/", " / ").split()
    for i, token in enumerate(tokens):
        if token == "/" and 0 < i < len(tokens) - 1:
            pairs.append((_number(tokens[i - 1]), _number(tokens[i + 1])))
    return pairs


def parse_npu_smi_table(text: str) -> NpuSmiOverview:
    """The `npu-smi info` table (npusmi_007): header `npu-smi <ver>  Version: <driver>`; per chip an NPU row
    `| <npu> <name> | <health> | <power> <temp> <hugepages used> / <total> |` then a chip row
    `| <chip> <device> | <bus-id> | <aicore> <memory used> / <total> [<hbm used> / <total>] |`. The process
    table that may follow is not read."""
    overview = NpuSmiOverview(path=None)
    current: dict | None = None
    for line in text.splitlines():
        if "Process id" in line or "Process name" in line:
            break  # the per-process table: rows of `npu chip | pid | name | memory`
        header = re.search(r"npu-smi\s+(\S+)\s+Version:\s*(\S+)", line)
        if header:
            overview.npu_smi_version, overview.driver_version = header.group(1), header.group(2)
            continue
        if not line.strip().startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3:
            continue
        tokens = cells[0].split()
        if not tokens or not tokens[0].isdigit():
            continue
        figures = cells[2].split()
        if len(tokens) >= 2 and not tokens[1].isdigit():  # NPU row: id, chip name
            current = {"npu_id": int(tokens[0]), "name": tokens[1], "health": cells[1],
                       "power_w": _number(figures[0]) if figures else None,
                       "temp_c": _number(figures[1]) if len(figures) > 1 else None}
        elif current is not None and all(t.isdigit() for t in tokens):  # chip row: chip id [, device id]
            pairs = _used_total(cells[2:])
            chip = NpuChip(npu_id=current["npu_id"], chip_id=int(tokens[0]), name=current["name"],
                           health=current["health"], power_w=current["power_w"], temp_c=current["temp_c"],
                           aicore_pct=_number(figures[0]) if figures else None, bus_id=cells[1])
            if pairs:
                chip.memory_used_mb, chip.memory_total_mb = pairs[0]
            if len(pairs) > 1:
                chip.hbm_used_mb, chip.hbm_total_mb = pairs[1]
            overview.chips.append(chip)
    return overview


def npu_smi_overview(timeout_s: float = 10.0) -> NpuSmiOverview:
    """`npu-smi info` parsed; ``path`` None where npu-smi does not exist, ``error`` where it failed."""
    path = npu_smi_path()
    if path is None:
        return NpuSmiOverview(path=None)
    out, error = _run_npu_smi(["info"], timeout_s)
    if out is None:
        return NpuSmiOverview(path=Path(path), error=error)
    overview = parse_npu_smi_table(out)
    overview.path = Path(path)
    if not overview.chips:
        overview.error = "`npu-smi info` listed no chip (driver not loaded, or no NPU visible)"
    return overview


def parse_npu_smi_fields(text: str, chip_id: int | None = None) -> dict[int, dict[str, str]]:
    """``Key : value`` output of `npu-smi info -t <type> -i <id> [-c <chip>]` → {chip id: {key: value}}.

    The `-c <chip>` form prints the chip's fields alone (they are returned under ``chip_id``); the all-chips
    form opens each chip's block with "Chip ID" and ends the MCU's block with "Chip Name : MCU" (its fields
    are left out). A blank line closes a chip's block."""
    blocks: dict[int, dict[str, str]] = {}
    loose: dict[str, str] = {}
    current: int | None = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if not line.strip():
                current = None
            continue
        key, value = key.strip(), value.strip()
        if key == "Chip ID" and value.isdigit():
            current = int(value)
            blocks.setdefault(current, {})
        elif key in ("NPU ID", "Chip Count"):
            continue
        elif current is not None:
            blocks[current][key] = value
        else:
            loose[key] = value
    if not blocks and loose and not (loose.get("Chip Name", "").upper() == "MCU"):
        blocks[chip_id if chip_id is not None else 0] = loose
    return blocks


def npu_smi_fields(kind: str, npu_id: int, chip_id: int | None = None,
                   timeout_s: float = 10.0) -> tuple[dict[int, dict[str, str]], str | None]:
    """`npu-smi info -t <kind> -i <npu_id> [-c <chip_id>]` parsed (see :func:`parse_npu_smi_fields`), and why
    it could not be read (None when it was)."""
    args = ["info", "-t", kind, "-i", str(npu_id)] + (["-c", str(chip_id)] if chip_id is not None else [])
    out, error = _run_npu_smi(args, timeout_s)
    if out is None:
        return {}, error
    return parse_npu_smi_fields(out, chip_id), None


def field_number(fields: dict[str, str], *names: str) -> float | None:
    """The first of ``names`` that ``fields`` holds as a number (keys compared without spaces and case:
    npu-smi prints both "Temperature (C)" and "Temperature(C)")."""
    squashed = {k.replace(" ", "").lower(): v for k, v in fields.items()}
    for name in names:
        value = _number(squashed.get(name.replace(" ", "").lower()))
        if value is not None:
            return value
    return None


def missing_toolkit_message(what: str, toolkit_home: str | None = None, alternative: str | None = None) -> str:
    """One line saying what is missing, then the fix and where we looked, indented (``alternative``: another way)."""
    lines = [f"{what}: the Ascend CANN toolkit is not installed or its environment is not loaded.",
             "  load it: source <toolkit>/set_env.sh, or set atc.toolkit_home=<folder with set_env.sh>",
             "  looked for set_env.sh at: " + ", ".join(str(p) for p in set_env_locations(toolkit_home))]
    if alternative:
        lines.append(f"  or {alternative}")
    return "\n".join(lines)
