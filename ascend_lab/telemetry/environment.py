"""The environment a run ran in, as ``environment.json``, and what differs between two of them.

Results that cannot be reproduced on Ascend usually come from an environment that moved: another CANN, driver,
firmware or torch_npu. Every run logs a snapshot (:func:`environment_snapshot`, logged by
:func:`log_environment` when the run opens), and ``task=doctor doctor.compare_to=<run id or file>`` prints
what differs between this host and that snapshot (:func:`diff_snapshots`).

The snapshot's groups (the diff reports by group):

- ``toolchain``: CANN toolkit version and where it is installed (the folder of its ``set_env.sh``), the
  ``ASCEND_*`` environment variables (``ASCEND_RT_VISIBLE_DEVICES`` among them), the ``LD_LIBRARY_PATH``
  entries under the Ascend roots (:func:`ascend_lab.cann_toolkit.candidate_toolkit_roots` and their parents), and the
  git commit of the code that ran.
- ``driver``: from ``npu-smi``: its version, the driver version (``npu-smi info``'s header), each NPU's
  firmware (``npu-smi info -t board -i <id>``) and each chip's name and health.
- ``python_packages``: python, torch, torch_npu, transformers, onnx, onnxruntime, mlflow, hydra-core
  (:data:`ascend_lab.tracking.VERSIONED_PACKAGES`; the run's ``version.*`` tags are the same figures).
- ``hardware``: CPU model, logical and physical cores, total memory, OS and kernel, machine.

``captured`` (host, time) is context, never diffed. :data:`RESULT_CHANGING` names the fields known to change
results (CANN, driver, torch_npu and torch versions); the diff marks them.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ascend_lab.cann import npu_smi as cann_npu_smi, toolkit as cann_toolkit
from ascend_lab.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = 1
GROUPS = ("toolchain", "driver", "python_packages", "hardware")
ARTIFACT = "environment.json"
DIFF_ARTIFACTS = ("environment_diff.json", "environment_diff.txt")
RESULT_CHANGING = ("toolchain.cann_version", "driver.driver_version", "python_packages.torch_npu",
                   "python_packages.torch")
GB = 1e9
KEY = "doctor.compare_to"


# ------------------------------------------------------------------------------------------------ snapshot


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text(errors="replace").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _ascend_roots(toolkit_home: str | None) -> list[Path]:
    roots = cann_toolkit.candidate_toolkit_roots(toolkit_home)
    return list(dict.fromkeys([*roots, *(r.parent for r in roots)]))


def _under(entry: str, roots: list[Path]) -> bool:
    path = Path(entry)
    return any(path == root or root in path.parents for root in roots)


def toolchain_facts(launch_dir: Path, toolkit_home: str | None = None) -> dict[str, Any]:
    from ascend_lab.tracking.metadata import git_commit

    set_env = cann_toolkit.find_set_env(toolkit_home)
    roots = _ascend_roots(toolkit_home)
    return {
        "cann_version": cann_toolkit.toolkit_version(toolkit_home) or "not installed",
        "cann_path": str(set_env.parent) if set_env else "not found",
        "environment": {k: v for k, v in sorted(os.environ.items()) if k.startswith("ASCEND_")},
        "ld_library_path_ascend": [e for e in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)
                                   if e and _under(e, roots)],
        "git_commit": git_commit(launch_dir) or git_commit(Path(__file__).resolve().parent) or "unknown",
    }


def driver_facts(timeout_s: float) -> dict[str, Any]:
    overview = cann_npu_smi.npu_smi_overview(timeout_s=timeout_s)
    if overview.path is None:
        return {"npu_smi": "not found"}
    facts: dict[str, Any] = {"npu_smi": str(overview.path), "npu_smi_version": overview.npu_smi_version or "unknown",
                             "driver_version": overview.driver_version or "unknown"}
    if overview.error:
        facts["npu_smi_error"] = overview.error
    firmware, chips = {}, {}
    for i, chip in enumerate(overview.chips):
        chips[f"npu_{i}"] = {"npu_id": chip.npu_id, "chip_id": chip.chip_id, "name": chip.name, "health": chip.health}
    for npu_id in sorted({c.npu_id for c in overview.chips}):
        board, _ = cann_npu_smi.npu_smi_fields("board", npu_id, timeout_s=timeout_s)
        fields = next(iter(board.values()), {})
        firmware[f"npu_{npu_id}"] = fields.get("Firmware Version", "unknown")
    facts["firmware"], facts["chips"] = firmware, chips
    return facts


def hardware_facts() -> dict[str, Any]:
    import psutil

    return {"cpu_model": cpu_model(), "cpu_cores_logical": psutil.cpu_count(logical=True),
            "cpu_cores_physical": psutil.cpu_count(logical=False),
            "memory_total_gb": round(psutil.virtual_memory().total / GB, 1), "os": _os_name(),
            "kernel": platform.release(), "machine": platform.machine(),
            # whether loaded weights can sit in 2 MiB pages (always: yes; benchmarks/README.md)
            "transparent_huge_pages": thp_mode()}


def thp_mode() -> str:
    """The host's transparent huge page mode (``always``, ``madvise`` or ``never``); '' where there is none."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else text.strip()


def environment_snapshot(launch_dir: Path, toolkit_home: str | None = None, npu_smi_timeout_s: float = 10.0) -> dict:
    """This host's environment (see the module docstring)."""
    from ascend_lab.tracking.metadata import package_versions

    return {
        "schema": SCHEMA,
        "captured": {"host": socket.gethostname(), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "toolchain": toolchain_facts(launch_dir, toolkit_home),
        "driver": driver_facts(npu_smi_timeout_s),
        "python_packages": package_versions(),
        "hardware": hardware_facts(),
    }


def log_environment(tracker, launch_dir: Path, toolkit_home: str | None = None) -> dict | None:
    """Log this host's snapshot as the run's ``environment.json``; returns it. A snapshot that cannot be taken
    is a warning (and a ``environment.error`` tag), never the job's failure: the job's own results stand."""
    try:
        snapshot = environment_snapshot(launch_dir, toolkit_home)
        tracker.log_dict(snapshot, ARTIFACT)
    except Exception as exc:
        log.warning("environment.json could not be recorded: %s: %s", type(exc).__name__, exc)
        tracker.set_tags({"environment.error": f"{type(exc).__name__}: {exc}"})
        return None
    return snapshot


# ------------------------------------------------------------------------------------------------ diff


@dataclass(frozen=True)
class Difference:
    group: str
    field: str  # dotted, within the group
    here: Any  # None: absent here
    there: Any  # None: absent there
    changes_results: bool

    @property
    def key(self) -> str:
        return f"{self.group}.{self.field}"


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def diff_snapshots(here: Mapping, there: Mapping) -> list[Difference]:
    """Every field whose value differs, by group in :data:`GROUPS` order, then field name."""
    differences = []
    for group in GROUPS:
        mine, theirs = _flat(here.get(group, {})), _flat(there.get(group, {}))
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                differences.append(Difference(group, name, mine.get(name), theirs.get(name),
                                              f"{group}.{name}" in RESULT_CHANGING))
    return differences


def diff_text(differences: list[Difference], reference: str) -> str:
    from ascend_lab.report import format_table

    if not differences:
        return f"environment: no difference between this host and {reference}\n"
    rows = [(d.group, ("* " if d.changes_results else "  ") + d.field, _shown(d.here), _shown(d.there))
            for d in differences]
    marked = sum(d.changes_results for d in differences)
    title = (f"environment: {len(differences)} difference(s) between this host and {reference}"
             f" ({marked} marked * are known to change results: CANN, driver, torch_npu, torch)")
    return format_table(["group", "field", "this host", "reference"], rows, title=title) + "\n"


def _shown(value: Any) -> str:
    if value is None:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value)


def diff_record(differences: list[Difference], reference: str) -> dict:
    return {"reference": reference, "differences": [asdict(d) | {"key": d.key} for d in differences]}


# ------------------------------------------------------------------------------------------------ the reference


def validate_snapshot(data: Any, where: str, value: str) -> dict:
    if not isinstance(data, dict) or not any(isinstance(data.get(g), dict) for g in GROUPS):
        raise ConfigError(KEY, value, f"{where} is not an environment.json: it has none of the groups "
                                      f"{', '.join(GROUPS)}. Give a run id or a file a run logged as environment.json")
    return data


def load_snapshot_file(path: Path, value: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(KEY, value, f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(KEY, value, f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); give the "
                                      "environment.json a run logged, or a run id") from None
    return validate_snapshot(data, str(path), value)


def reference_file(value: str, path: Path) -> Path | None:
    """The environment.json ``doctor.compare_to`` names (``path``: the value made absolute), or None where the
    value is a run id; a value that reads as a path but names no file fails."""
    if path.is_file():
        return path
    if path.suffix == ".json" or os.sep in value:
        raise ConfigError(KEY, value, f"no such file: {path}. Give the path of an environment.json or a run id")
    return None


def load_reference(value: str, path: Path, tracking_uri: str) -> tuple[dict, str]:
    """(snapshot, description) for ``doctor.compare_to``: the environment.json at ``path`` (the value made
    absolute), else the run ``value`` in the store at ``tracking_uri``."""
    file = reference_file(value, path)
    if file is not None:
        return load_snapshot_file(file, value), str(file)
    return _from_run(value, tracking_uri), f"run {value}"


def _from_run(run_id: str, tracking_uri: str) -> dict:
    import tempfile

    from ascend_lab.tracking.client import mlflow_client

    from ascend_lab.tracking.ui import SQLITE_PREFIX

    if tracking_uri.startswith(SQLITE_PREFIX) and not Path(tracking_uri[len(SQLITE_PREFIX):]).is_file():
        raise ConfigError(KEY, run_id, f"no such file, and no MLflow store at {tracking_uri} to look the run id up in. "
                                       "Give the path of an environment.json, or a run id with tracking.uri naming "
                                       "its store")
    try:
        client = mlflow_client(tracking_uri)
        client.get_run(run_id)
    except Exception:
        raise ConfigError(KEY, run_id, f"no MLflow run with this id in {tracking_uri}, and no file of that name. "
                                       "Give a run id from that store (mlflow ui) or the path of an environment.json") \
            from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, ARTIFACT, tmp)
        except Exception:
            raise ConfigError(KEY, run_id, f"run {run_id} has no {ARTIFACT} (it predates environment snapshots); "
                                           "compare with a newer run or an environment.json file") from None
        return load_snapshot_file(Path(local), run_id)


__all__ = ["ARTIFACT", "DIFF_ARTIFACTS", "Difference", "GROUPS", "RESULT_CHANGING", "diff_record", "diff_snapshots",
           "diff_text", "environment_snapshot", "load_reference", "load_snapshot_file", "log_environment",
           "reference_file"]
