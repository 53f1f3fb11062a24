"""The NPU driver's ``npu-smi``: the chip names the compiler and pyACL runtime need, and the table and field
queries of telemetry, the environment snapshot and doctor's board table. Every query is a subprocess with a
timeout; a missing, hanging or failing npu-smi is a reason, never an exception.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


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


def detected_soc_version(timeout_s: float = 10.0) -> tuple[str | None, str]:
    """(ATC --soc_version of this host's chip, where it came from). pyACL's ``acl.get_soc_name()`` is the
    authority where pyACL imports (it names the chip the runtime sees, "Ascend910B3"; None on failure:
    aclpythondevg_01_0008, https://www.hiascend.com/document/detail/zh/canncommercial/601/inferapplicationdev/aclpythondevg/aclpythondevg_01_0008.html;
    no acl.init needed); else the `npu-smi info` table (:func:`query_npu_smi`)."""
    try:
        import acl  # noqa: PLC0415 - CANN's module, present only where its environment is loaded

        name = acl.get_soc_name()
    except Exception:  # noqa: BLE001 - ImportError, a missing libascendcl.so, or an older pyACL without it
        name = None
    if name:
        return str(name), "acl.get_soc_name()"
    smi = query_npu_smi(timeout_s)
    return smi.soc_version, "npu-smi info" if smi.soc_version else "none (no pyACL, no npu-smi chip)"


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
# Formats are the hiascend npu-smi reference pages (Atlas 200I A2 "re/npu" set):
# `npu-smi info` (npusmi_007: the table), `-t board -i id` (npusmi_008: Software Version = driver, Firmware
# Version), `-t power -i id [-c chip]` (npusmi_023/024: NPU Real-time Power(W)), `-t usages -i id [-c chip]`
# (npusmi_019/020: Aicore Usage Rate(%), Memory Capacity(MB) / Memory Usage Rate(%); A2/A3 servers print
# HBM Capacity(MB) / HBM Usage Rate(%) as well, as mindspore-lab/mindediting utils/tests.py reads them),
# `-t temp -i id [-c chip]` (npusmi_021/022: Temperature (C)). The all-chips form (`-i id` alone) prints
# "NPU ID" and "Chip Count", then one block per chip opened by "Chip ID", then an MCU block that ends with
# "Chip Name : MCU"; blocks are separated by blank lines. A value npu-smi cannot read is printed as NA.


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
