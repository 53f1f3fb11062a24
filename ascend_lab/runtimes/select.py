"""Choosing and opening the runtime (``runtime=auto|torch|onnxruntime|acl``).

``auto`` picks ``acl`` where pyACL imports and a compiled ``.om`` exists (compiling it through the
cache where ``atc`` is found), else ``onnxruntime``. The choice and its reason become the run's
``runtime`` / ``runtime.reason`` tags, and the artifact measured its ``onnx_sha256`` /
``om_sha256`` tag. Preparing an artifact (export, compile) happens here, before the runtime loads,
so its cost is reported apart from ``load_seconds``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from ascend_lab import cann
from ascend_lab.bench.generation import GraphLayout
from ascend_lab.errors import ToolchainError

log = logging.getLogger(__name__)


@dataclass
class RuntimePlan:
    name: str  # torch | onnxruntime | acl
    reason: str
    exported: Any = None  # ExportedModel (onnxruntime, acl)
    compiled: Any = None  # CompiledModel (acl)
    prepare_seconds: float = 0.0

    def tags(self) -> dict[str, str]:
        tags = {"runtime": self.name, "runtime.reason": self.reason}
        if self.exported is not None:
            tags["onnx_sha256"] = self.exported.sha256
        if self.compiled is not None:
            tags["om_sha256"] = self.compiled.sha256
        return tags


def plan_runtime(cfg, ctx) -> RuntimePlan:
    """Resolve ``runtime.name`` and prepare what the chosen runtime loads (export, compile)."""
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
        raise ToolchainError(f"runtime=acl needs pyACL (`import acl`): {acl_why}. "
                             + cann.missing_toolkit_message("pyACL", cfg.atc.toolkit_home)
                             + " Or use runtime=onnxruntime / runtime=torch.")
    exported = ensure_exported(cfg, ctx)
    if not acl_ok:  # auto without pyACL: compiling would produce nothing this host can run
        return RuntimePlan("onnxruntime", f"auto: pyACL not importable ({acl_why}); using onnxruntime",
                           exported, prepare_seconds=time.perf_counter() - started)

    from ascend_lab.atc import ensure_compiled

    compiled = ensure_compiled(cfg, ctx, exported)
    elapsed = time.perf_counter() - started
    if compiled is not None:
        reason = "runtime=acl requested" if requested == "acl" else "auto: compiled .om and pyACL available"
        return RuntimePlan("acl", f"{reason} ({compiled.om_path.name})", exported, compiled, elapsed)
    atc_where = cann.find_atc(cfg.atc.toolkit_home)
    why = "atc not found" if atc_where is None else f"no .om from {atc_where}"
    if requested == "acl":
        raise ToolchainError(f"runtime=acl needs a compiled .om, but there is none ({why}). "
                             + cann.missing_toolkit_message("atc", cfg.atc.toolkit_home)
                             + " Or use runtime=onnxruntime.")
    return RuntimePlan("onnxruntime", f"auto: pyACL available but no compiled .om ({why}); using onnxruntime",
                       exported, prepare_seconds=elapsed)


def open_runtime(plan: RuntimePlan, cfg, ctx):
    """Load the planned runtime (the caller times this as ``load_seconds``)."""
    if plan.name == "torch":
        from ascend_lab.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime.load(cfg, ctx.device)
    if plan.name == "onnxruntime":
        from ascend_lab.runtimes.onnxruntime_runtime import OnnxRuntime

        device = ctx.device
        runtime = OnnxRuntime(plan.exported.onnx_path, device.kind, device.index, cfg.runtime.intra_op_threads,
                              cfg.runtime.inter_op_threads, cfg.runtime.graph_optimization)
        ctx.tracker.set_tags({"onnxruntime.providers": ",".join(runtime.providers)})
        return runtime
    from ascend_lab.runtimes.acl import AclRuntime

    return AclRuntime(plan.compiled.om_path, device_id=cfg.device.index)


def layout_for(plan: RuntimePlan, runtime) -> GraphLayout:
    if plan.exported is not None:
        return GraphLayout.from_exported(plan.exported)
    return runtime.layout


def tokenizer_for(cfg, runtime):
    """The model's tokenizer (the torch runtime already built it)."""
    tokenizer = getattr(runtime, "tokenizer", None)
    if tokenizer is None:
        from ascend_lab.models import build_tokenizer

        tokenizer = build_tokenizer(cfg.model)
    return tokenizer
