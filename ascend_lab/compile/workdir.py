"""Where one compile's ATC runs and what it is told about the host: its own folder per job, its own log folder,
and a bound on its parallel kernel compilers.

- **Work directory.** ATC writes ``fusion_result.json`` (``--export_compile_stat``, on by default:
  https://www.hiascend.com/document/detail/en/canncommercial/850/devaids/atctool/atlasatcparam_16_0098.html)
  and ``kernel_meta/`` into the directory it runs in, so two jobs compiling from one launch directory would
  overwrite each other's. Each compile runs in ``<job output dir>/atc_work``.
- **Logs.** ATC's console says little; its detailed log goes to ``$ASCEND_PROCESS_LOG_PATH`` (before
  ``$ASCEND_WORK_PATH``, before ``$HOME/ascend/log``: envref_07_0120,
  https://www.hiascend.com/document/detail/zh/canncommercial/900/maintenref/envvar/envref_07_0120.html), under
  ``debug/plog``. Unless the user set it, each compile logs into its work directory; a failure names the folder.
- **TE_PARALLEL_COMPILER** (operator compile processes; "at most CPU cores × 80 % / AI processors, 1–32,
  default 8": envref_07_0020,
  https://www.hiascend.com/document/detail/zh/canncommercial/800/apiref/envvar/envref_07_0020.html). Each
  process builds kernels on its own, so memory bounds it too: unless the user set it, it is the documented
  default capped by the cores rule and by :data:`GB_PER_COMPILER` of available memory per process (our
  estimate, not a documented figure; Tlntin/qwen-ascend-llm lowers it for the same reason).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

WORK_FOLDER = "atc_work"
LOG_FOLDER = "ascend_log"
DEFAULT_PARALLEL = 8  # ATC's documented default
MAX_PARALLEL = 32
GB_PER_COMPILER = 2.0


def available_memory_gb() -> float | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def parallel_compilers(cores: int, memory_gb: float | None, processors: int = 1) -> int:
    """TE_PARALLEL_COMPILER for this host: the documented default, at most cores × 80 % / processors and one
    process per :data:`GB_PER_COMPILER` of available memory, within 1–32."""
    limit = min(DEFAULT_PARALLEL, int(cores * 0.8 / max(processors, 1)))
    if memory_gb is not None:
        limit = min(limit, int(memory_gb / GB_PER_COMPILER))
    return max(1, min(limit, MAX_PARALLEL))


def plog_dir(env: Mapping[str, str]) -> Path:
    """Where ATC's detailed logs go under ``env`` (envref_07_0120's order)."""
    if env.get("ASCEND_PROCESS_LOG_PATH"):
        return Path(env["ASCEND_PROCESS_LOG_PATH"])
    if env.get("ASCEND_WORK_PATH"):
        return Path(env["ASCEND_WORK_PATH"]) / "log"
    return Path(env.get("HOME") or Path.home()) / "ascend" / "log"


def atc_environment(base: Mapping[str, str], work_dir: Path, processors: int = 1) -> tuple[dict[str, str], dict]:
    """(the environment ATC runs with, what was chosen for it): its log folder inside ``work_dir`` and a bounded
    TE_PARALLEL_COMPILER, each only where the user has not set it."""
    env, chosen = dict(base), {}
    if not env.get("ASCEND_PROCESS_LOG_PATH"):
        env["ASCEND_PROCESS_LOG_PATH"] = str(Path(work_dir) / LOG_FOLDER)
        chosen["ASCEND_PROCESS_LOG_PATH"] = env["ASCEND_PROCESS_LOG_PATH"]
    if not env.get("TE_PARALLEL_COMPILER"):
        env["TE_PARALLEL_COMPILER"] = str(parallel_compilers(os.cpu_count() or 1, available_memory_gb(), processors))
        chosen["TE_PARALLEL_COMPILER"] = env["TE_PARALLEL_COMPILER"]
    return env, chosen


def failure_hint(env: Mapping[str, str], work_dir: Path) -> str:
    """The lines a failed compile adds: where ATC's own logs and files are."""
    return (f"ATC's detailed log (plog): {plog_dir(env) / 'debug' / 'plog'} (ASCEND_PROCESS_LOG_PATH); "
            f"its work directory (fusion_result.json, kernel_meta/): {work_dir}")
