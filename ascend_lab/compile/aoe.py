"""CANN's AOE (Ascend Optimization Engine) before the compile: ``atc.tuning=subgraph|operator``.

What the CANN AOE pages document (aoe "Tuning a Model with the AOE Tool", "--job_type", "Tuning Result Viewing";
hiascend aoerc_16_0002):

- ``aoe --framework=5 --model=<onnx> --job_type=1`` tunes subgraphs (SGAT), ``--job_type=2`` operators (OPAT);
  AOE takes ATC's model-conversion options (input shape, formats, precision, ...) beside its own;
- it ends with ``[Aoe]Aoe process finished,cost time <n>s.`` and, where it helped, ``<task> process finished.
  Performance improved by <x>%``;
- the result file ``aoe_result_{sgat|opat}_<timestamp>_pid<n>.json`` lands in the working directory
  (``ASCEND_WORK_PATH`` first), the tuned knowledge base in ``TUNE_BANK_PATH`` (before ``ASCEND_CACHE_PATH`` and
  ``~/Ascend/latest/data/aoe/custom/{graph|op}/<soc>``), which a later ``atc`` run reads from the same variable.

So the compile runs AOE with ``ASCEND_WORK_PATH`` and ``TUNE_BANK_PATH`` inside the compile's cache entry, then
``atc`` with the same ``TUNE_BANK_PATH``: the .om is built from this tuning's knowledge base, and the tuning mode is
part of the compile's cache key (:func:`ascend_lab.compile.command.cache_key`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ascend_lab.compile.runner import CompileResult, run_atc
from ascend_lab.config.atc import AOE_JOB_TYPES
from ascend_lab.errors import AscendLabError

FINISHED_MARK = "process finished"  # "[Aoe]Aoe process finished,cost time 1109s."
IMPROVEMENT = re.compile(r"Performance improved by\s*(-?[\d.]+)\s*%")
RESULT_GLOB = "aoe_result_*.json"
# ATC options AOE is not given: the target is the device AOE tunes on, logs are AOE's own, output is AOE's folder.
NOT_PASSED = ("soc_version", "log", "output")
BANK_FOLDER, WORK_FOLDER = "aoe_bank", "aoe_work"


class AoeError(AscendLabError):
    """AOE ran and failed (exit status, no finish line, timeout)."""


@dataclass
class AoeReport:
    argv: list[str]
    seconds: float
    log_path: Path
    bank: Path  # TUNE_BANK_PATH: the knowledge base atc reads next
    results: list[Path] = field(default_factory=list)  # aoe_result_*.json
    improvement_pct: float | None = None

    def summary(self) -> dict:
        return {"argv": self.argv, "seconds": self.seconds, "improvement_pct": self.improvement_pct,
                "results": [p.name for p in self.results]}


def aoe_command(aoe_path: str | Path, atc_argv: Sequence[str], tuning: str, output_prefix: Path) -> list[str]:
    """The compile's ATC command as AOE takes it: the same model and conversion options, AOE's own output, and
    ``--job_type``."""
    options = [a for a in atc_argv[1:] if a.lstrip("-").split("=", 1)[0] not in NOT_PASSED]
    return [str(aoe_path), *options, f"--output={output_prefix}", f"--job_type={AOE_JOB_TYPES[tuning]}"]


def tuning_environment(base: Mapping[str, str], folder: Path) -> dict[str, str]:
    """``base`` with AOE's working folder and knowledge base inside ``folder`` (the compile's staging entry)."""
    return {**base, "ASCEND_WORK_PATH": str(folder / WORK_FOLDER), "TUNE_BANK_PATH": str(folder / BANK_FOLDER)}


def run_aoe(argv: Sequence[str], env: Mapping[str, str], folder: Path, timeout_s: float, log_path: Path) -> AoeReport:
    """Run AOE (streamed to the console and ``log_path``, its process group killed on timeout) and read its report."""
    (folder / WORK_FOLDER).mkdir(parents=True, exist_ok=True)
    (folder / BANK_FOLDER).mkdir(parents=True, exist_ok=True)
    result: CompileResult = run_atc(argv, env, timeout_s, log_path)
    text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    details = f"Full log: {log_path}\n--- last lines of the AOE log ---\n{result.tail}"
    if result.timed_out:
        raise AoeError(f"AOE timed out after {timeout_s:g} s (atc.tuning_timeout_s) and was killed with its process "
                       f"group; raise atc.tuning_timeout_s or use atc.tuning=none.\n{details}")
    if result.returncode != 0 or FINISHED_MARK not in text:
        raise AoeError(f"AOE failed (exit status {result.returncode}"
                       + ("" if FINISHED_MARK in text else f", no '{FINISHED_MARK}' line") + f").\n{details}")
    results = sorted((folder / WORK_FOLDER).rglob(RESULT_GLOB))
    return AoeReport(list(argv), result.seconds, Path(log_path), folder / BANK_FOLDER, results,
                     _improvement(text, results))


def _improvement(text: str, results: list[Path]) -> float | None:
    """The model's improvement in %: from the console line, else the result file's
    ``model_performance_improvement`` ("0.31%")."""
    found = IMPROVEMENT.findall(text)
    if found:
        return float(found[-1])
    for path in results:
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for entry in entries if isinstance(entries, list) else [entries]:
            for section in entry.values() if isinstance(entry, dict) else []:
                value = section.get("model_performance_improvement") if isinstance(section, dict) else None
                if isinstance(value, str) and value.rstrip("%").replace(".", "", 1).lstrip("-").isdigit():
                    return float(value.rstrip("%"))
    return None
