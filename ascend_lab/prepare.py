"""Preparing what a runtime loads: the orchestration between the config and a runtime.

``runtime=torch`` needs nothing; ``onnxruntime`` the exported graph (``model.dtype``); ``acl`` the graph
exported in ``atc.export_dtype``, checked against ATC's ONNX operators and compiled to an ``.om`` for
the benchmark's batch. ``auto`` picks ``acl`` where pyACL imports and a compiled ``.om`` exists (compiling
it through the cache where ``atc`` is found), else ``onnxruntime``. Each step goes through its cache, so
preparing twice costs a lookup. The choice and its reason become the run's ``runtime`` /
``runtime.reason`` tags, and the artifacts measured their ``onnx_sha256`` / ``om_sha256`` tags.
Runtimes only load what this produced.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ascend_lab import cann
from ascend_lab.errors import ToolchainError

log = logging.getLogger(__name__)


@dataclass
class RuntimePlan:
    name: str  # torch | onnxruntime | acl
    reason: str
    exported: Any = None  # ExportedModel (onnxruntime, acl)
    compiled: Any = None  # CompiledModel (acl)
    prepare_seconds: float = 0.0
    # onnxruntime with runtime.transformer_optimize: the derived graph it loads instead of the export
    optimized_onnx: Any = None

    @property
    def onnx_path(self):
        """The ONNX file onnxruntime loads."""
        return self.optimized_onnx or self.exported.onnx_path

    def tags(self) -> dict[str, str]:
        tags = {"runtime": self.name, "runtime.reason": self.reason}
        if self.exported is not None:
            tags["onnx_sha256"] = self.exported.sha256
        if self.optimized_onnx is not None:
            tags["onnx_optimized_path"] = str(self.optimized_onnx)
        if self.compiled is not None:
            tags["om_sha256"] = self.compiled.sha256
        return tags


_warned: set[str] = set()  # runtime keys already warned about in this process (pipelines plan per batch)


def plan_runtime(cfg, ctx) -> RuntimePlan:
    """Resolve ``runtime.name`` and prepare what the chosen runtime loads (export, op check, compile);
    warn once about runtime keys set for another runtime than the one chosen."""
    from ascend_lab.config.runtime import ignored_runtime_keys

    plan = _plan(cfg, ctx)
    if plan.name == "onnxruntime" and cfg.runtime.transformer_optimize:
        from ascend_lab.export.optimize import optimized_graph

        started = time.perf_counter()
        dims = plan.exported.contract.dims
        plan.optimized_onnx = optimized_graph(plan.exported, dims.num_heads, dims.hidden_size)
        plan.prepare_seconds += time.perf_counter() - started
    for key, message in ignored_runtime_keys(cfg.runtime, plan.name).items():
        if message not in _warned:
            _warned.add(message)
            log.warning("%s", message)
        ctx.tracker.set_tags({f"ignored.{key}": message})
    return plan


def _plan(cfg, ctx) -> RuntimePlan:
    requested = cfg.runtime.name
    if requested == "torch":
        return RuntimePlan("torch", "runtime=torch requested: the PyTorch model on the resolved device")
    from ascend_lab.export import ensure_exported

    started = time.perf_counter()
    if requested == "onnxruntime":
        exported = ensure_exported(cfg, ctx)
        return RuntimePlan("onnxruntime", "runtime=onnxruntime requested", exported,
                           prepare_seconds=time.perf_counter() - started)

    acl_ok, acl_why = cann.acl_importable()
    if requested == "acl" and not acl_ok:
        raise ToolchainError(cann.missing_toolkit_message(
            f"runtime=acl needs pyACL (`import acl`: {acl_why})", cfg.atc.toolkit_home,
            "use runtime=onnxruntime or runtime=torch"))
    if not acl_ok:  # auto without pyACL: compiling would produce nothing this host can run
        exported = ensure_exported(cfg, ctx)
        return RuntimePlan("onnxruntime", f"auto: pyACL not importable ({acl_why}); using onnxruntime",
                           exported, prepare_seconds=time.perf_counter() - started)

    from ascend_lab.compile import ensure_compiled

    exported = ensure_exported(cfg, ctx, dtype=cfg.atc.export_dtype)
    compiled = ensure_compiled(cfg, ctx, exported)
    elapsed = time.perf_counter() - started
    if compiled is not None:
        reason = "runtime=acl requested" if requested == "acl" else "auto: compiled .om and pyACL available"
        return RuntimePlan("acl", f"{reason} ({compiled.om_path.name})", exported, compiled, elapsed)
    atc_where = cann.find_atc(cfg.atc.toolkit_home)
    why = "atc not found" if atc_where is None else f"no .om from {atc_where}"
    if requested == "acl":
        raise ToolchainError(cann.missing_toolkit_message(
            f"runtime=acl needs a compiled .om, but there is none ({why})", cfg.atc.toolkit_home,
            "use runtime=onnxruntime"))
    exported = ensure_exported(cfg, ctx)
    return RuntimePlan("onnxruntime", f"auto: pyACL available but no compiled .om ({why}); using onnxruntime",
                       exported, prepare_seconds=time.perf_counter() - started)
