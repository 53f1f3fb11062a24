"""Profiling the acl runtime: pyACL's profiling API (``acl.prof``) around the profiled pass's executions.

Each phase is one profiling session in its own folder, whose ``op_summary`` CSVs :mod:`ascend_lab.profiling.msprof`
parses; see :class:`AclProfiling` for the call order and where it is documented.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ascend_lab.errors import ToolchainError
from ascend_lab.profiling import msprof
from ascend_lab.profiling.events import MSPROF, TraceFile
from ascend_lab.runtimes.acl.pyacl import ACL_SUCCESS

log = logging.getLogger(__name__)

# data_type_config bits of acl.prof.create_config (aclpythondevg "create_config", CANN 5.0.4 page aclpythondevg_01_0705:
# ACL_PROF_ACL_API=0x0001, ACL_PROF_TASK_TIME=0x0002, ACL_PROF_AICORE_METRICS=0x0004; the 8.0 profiling sample ORs
# the same three).
ACL_PROF_ACL_API = 0x0001
ACL_PROF_TASK_TIME = 0x0002
ACL_PROF_AICORE_METRICS = 0x0004
# profile.aic_metrics (torch_npu's AiCMetrics names) → aclprofAicoreMetrics (aclpythondevg "aclprofAicoreMetrics").
ACL_AICORE_METRICS = {
    "ArithmeticUtilization": 0, "PipeUtilization": 1, "Memory": 2, "MemoryL0": 3, "ResourceConflictRatio": 4,
    "MemoryUB": 5, "L2Cache": 6, "MemoryAccess": 8, "AiCoreNone": 0xFF,
}


class AclProfiling:
    """A profile session of the pyACL profiling API (:class:`ascend_lab.runtimes.base.ProfileSession`).

    Each phase is one profiling session in its own folder, in the documented order (aclpythondevg "Profiling
    pyACL API" sample and its call-order rules): ``acl.prof.init(<absolute folder>)`` → ``create_config([device],
    aic_metrics, 0, ACL_API | TASK_TIME | AICORE_METRICS)`` → ``start(config)`` → the phase's executions →
    ``stop(config)`` → ``destroy_config(config)`` → ``finalize()``. A session per phase keeps each phase's operator
    tasks apart (``op_summary`` rows carry device timestamps only). Every call goes through the runtime's checked,
    counted calls; every profiling resource acquired is released in reverse order however the phase ends, and a
    release problem never hides the error that ended the phase.
    """

    def __init__(self, runtime, out_dir: Path, settings) -> None:
        self.runtime = runtime
        self.out_dir = out_dir
        self.settings = settings
        self.traces: list = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        rt, acl = self.runtime, self.runtime._acl
        folder = (self.out_dir / name).resolve()  # acl.prof.init takes an absolute path
        folder.mkdir(parents=True, exist_ok=True)
        metrics = ACL_AICORE_METRICS[self.settings.aic_metrics]
        data_types = ACL_PROF_ACL_API | ACL_PROF_TASK_TIME | (ACL_PROF_AICORE_METRICS if metrics != 0xFF else 0)
        acquired: list[tuple[str, Any]] = []  # what to release, in acquisition order
        try:
            rt._call("acl.prof.init", acl.prof.init, str(folder))
            acquired.append(("acl.prof.finalize", acl.prof.finalize))
            config = rt._handle("acl.prof.create_config",
                                acl.prof.create_config([rt.device_id], metrics, 0, data_types))
            rt.traffic.count("acl.prof.create_config")
            acquired.append(("acl.prof.destroy_config", lambda: acl.prof.destroy_config(config)))
            rt._call("acl.prof.start", acl.prof.start, config)
            acquired.append(("acl.prof.stop", lambda: acl.prof.stop(config)))
            yield
        except BaseException:
            problems = self._release(acquired)
            if problems:
                log.warning("runtime=acl: releasing profiling after a failed phase: %s", "; ".join(problems))
            raise
        problems = self._release(acquired)
        if problems:
            raise ToolchainError("runtime=acl: releasing the pyACL profiling session failed: " + "; ".join(problems))
        self.traces.append(TraceFile(folder, MSPROF, phase=name, parser=msprof.parse))

    def _release(self, acquired: list[tuple[str, Any]]) -> list[str]:
        """stop → destroy_config → finalize (the reverse of acquisition), each attempted; returns the failures."""
        problems = []
        for call, release in reversed(acquired):
            self.runtime.traffic.count(call)
            try:
                ret = release()
            except Exception as exc:  # keep releasing the rest
                problems.append(f"{call}: {exc}")
                continue
            if ret != ACL_SUCCESS:
                problems.append(f"{call} failed: ret={ret}")
        acquired.clear()
        return problems
