"""Preparing and opening what a task runs: the orchestration between the config and a runtime.

A task opens a ready engine with one call::

    with open_engine(cfg, ctx) as loaded:          # loaded.plan, .runtime, .tokenizer, .load_seconds, .timer
        engine = loaded.engine(max_tokens)         # its kind and notes recorded as tags

Each runtime's config declares the artifact it loads (``artifact``; ``ascend_lab/runtimes/<name>/config.py``):
``model`` (torch builds it in process, nothing to prepare), ``onnx`` / ``optimized_onnx`` (onnxruntime: the export
in ``model.dtype``, through onnxruntime's transformer optimizer where its config says so), ``om`` (acl: exported in
``atc.export_dtype``, checked against ATC's ONNX operators and compiled for the benchmark's batch). ``runtime=auto``
picks acl where pyACL imports and a compiled ``.om`` exists (compiling it through the cache where ``atc`` is
found), else onnxruntime at its defaults. Each step goes through its cache, so preparing twice costs a lookup.
The choice and its reason become the run's ``runtime`` / ``runtime.reason`` tags, and the artifacts their
``onnx_sha256`` / ``om_sha256`` tags. The runtime class is the one its config's ``_target_`` names; it receives
its own config, the artifact and the device, nothing else.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from hydra.utils import get_class

from ascend_lab.cann import toolkit
from ascend_lab.config.runtime import RuntimeConfig
from ascend_lab.errors import ToolchainError
from ascend_lab.graph_contract import GraphFile
from ascend_lab.models import ModelSource
from ascend_lab.runtimes.acl.config import AclRuntimeConfig
from ascend_lab.runtimes.base import Runtime
from ascend_lab.runtimes.engine import Engine, engine_for
from ascend_lab.runtimes.onnxruntime.config import OnnxRuntimeConfig

log = logging.getLogger(__name__)


@dataclass
class RuntimePlan:
    """The chosen runtime's own config (never auto), why it was chosen, and what it loads."""

    config: RuntimeConfig
    reason: str
    artifact: Any  # ModelSource (torch) or GraphFile (onnxruntime: the .onnx; acl: the .om)
    exported: Any = None  # ExportedModel (onnxruntime, acl)
    compiled: Any = None  # CompiledModel (acl)
    optimized_onnx: Any = None  # onnxruntime with transformer_optimize: the derived graph it loads
    prepare_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def onnx_path(self):
        """The ONNX file the runtime loads or was compiled from."""
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


def plan_runtime(cfg, ctx) -> RuntimePlan:
    """Resolve ``runtime=auto`` and prepare what the chosen runtime loads (export, op check, compile); its tags
    go on ``ctx.tracker``."""
    started = time.perf_counter()
    if cfg.runtime.artifact is None:
        plan = _auto(cfg, ctx)
    else:
        plan = _PREPARE[cfg.runtime.artifact](cfg, ctx, cfg.runtime, f"runtime={cfg.runtime.name} requested")
    plan.prepare_seconds = time.perf_counter() - started
    ctx.tracker.set_tags(plan.tags())
    log.info("runtime %s (%s)", plan.name, plan.reason)
    return plan


@dataclass
class LoadedRuntime:
    """An open runtime with what a task needs around it (:func:`open_engine`)."""

    plan: RuntimePlan
    runtime: Runtime
    load_seconds: float
    cfg: Any = field(repr=False)
    ctx: Any = field(repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    @property
    def timer(self):
        """The clock of one timed call on this runtime (:meth:`Runtime.timer`)."""
        return self.runtime.timer(self.ctx.device_for(self.plan.name))

    @property
    def tokenizer(self):
        """The model's tokenizer (the torch runtime built one already)."""
        if self._tokenizer is None:
            from ascend_lab.models import build_tokenizer

            self._tokenizer = self.runtime.tokenizer or build_tokenizer(self.cfg.model)
        return self._tokenizer

    def engine(self, max_tokens: int, keep_logits: bool = False, runtime: Runtime | None = None) -> Engine:
        """A generation engine for ``max_tokens`` (prompt + new tokens) on this runtime, or on ``runtime`` (a
        profiler's own); its kind and notes become the run's ``engine`` / ``engine.notes`` tags."""
        return engine_for(runtime or self.runtime, self.cfg.export, max_tokens, self.ctx.tracker, keep_logits)

    def profile(self, engine, input_ids, attention_mask, scenario: str | None = None):
        """The scenario (``benchmark.scenario`` unless given) once more under the runtime's profiler
        (:mod:`ascend_lab.profiling`), after the timed pass: a generation's prefill and decode steps on ``engine``, or
        forward passes (the kv_cache graph's prefill on ``engine``, or without one the graph's plain run)."""
        from ascend_lab.profiling.profiled_pass import PROFILE_FOLDER, profile_forward, profile_generate

        bench, settings, toolkit_home = self.cfg.benchmark, self.cfg.profile, self.cfg.atc.toolkit_home
        runtime, timer = self.runtime, self.timer
        out_dir, prompt_len = self.ctx.output_dir / PROFILE_FOLDER, input_ids.shape[1]
        if (scenario or bench.scenario) == "generate":
            return profile_generate(runtime, engine, lambda rt: self.engine(prompt_len + bench.new_tokens, runtime=rt),
                                    settings, out_dir, input_ids, attention_mask, bench.new_tokens, timer, toolkit_home)
        if engine is not None:  # the kv_cache graph: its forward pass is the prompt's prefill

            def prefill_on(rt):
                other = self.engine(prompt_len + 1, runtime=rt)
                other.prepare(bench.batch_size, prompt_len, 1)
                return lambda: other.prefill(input_ids, attention_mask)

            return profile_forward(runtime, lambda: engine.prefill(input_ids, attention_mask), prefill_on, settings,
                                   out_dir, timer, toolkit_home)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return profile_forward(runtime, runtime.bind(feeds), lambda rt: rt.bind(feeds), settings, out_dir, timer,
                               toolkit_home)


@contextmanager
def open_engine(cfg, ctx, plan: RuntimePlan | None = None) -> Iterator[LoadedRuntime]:
    """Plan (unless ``plan`` is given) and load the runtime on the job's device, timed as ``load_seconds``; the
    runtime is closed however the block ends."""
    plan = plan or plan_runtime(cfg, ctx)
    started = time.perf_counter()
    # runtime=acl: the host side is the CPU, resolved without torch_npu (JobContext.device_for)
    runtime = get_class(plan.config._target_).load(plan.config, plan.artifact, ctx.device_for(plan.name))
    with runtime:
        yield LoadedRuntime(plan, runtime, time.perf_counter() - started, cfg, ctx)


# ------------------------------------------------------------------------------------------------
# The artifacts


def _model(cfg, ctx, config, reason: str) -> RuntimePlan:
    return RuntimePlan(config, f"{reason}: the PyTorch model on the resolved device",
                       ModelSource(cfg.model, cfg.seed, cfg.export.graph, cfg.export.layer_outputs))


def _onnx(cfg, ctx, config, reason: str) -> RuntimePlan:
    from ascend_lab.export import ensure_exported

    exported = ensure_exported(cfg, ctx)
    return RuntimePlan(config, reason, GraphFile(exported.onnx_path, exported.contract), exported)


def _optimized_onnx(cfg, ctx, config, reason: str) -> RuntimePlan:
    from ascend_lab.export.optimize import optimized_graph

    plan = _onnx(cfg, ctx, config, reason)
    dims = plan.exported.contract.dims
    plan.optimized_onnx = optimized_graph(plan.exported, dims.num_heads, dims.hidden_size)
    plan.artifact = GraphFile(plan.optimized_onnx, plan.exported.contract)
    return plan


def _om(cfg, ctx, config, reason: str) -> RuntimePlan:
    """The .om, or a ToolchainError saying what is missing (pyACL or a compiled graph)."""
    acl_ok, acl_why = toolkit.acl_importable()
    if not acl_ok:
        raise ToolchainError(toolkit.missing_toolkit_message(
            f"runtime=acl needs pyACL (`import acl`: {acl_why})", cfg.atc.toolkit_home,
            "use runtime=onnxruntime or runtime=torch"))
    plan = _compiled(cfg, ctx, config, reason)
    if plan is None:
        raise ToolchainError(toolkit.missing_toolkit_message(
            f"runtime=acl needs a compiled .om, but there is none ({_why_no_om(cfg)})", cfg.atc.toolkit_home,
            "use runtime=onnxruntime"))
    return plan


def _compiled(cfg, ctx, config, reason: str) -> RuntimePlan | None:
    from ascend_lab.compile import ensure_compiled
    from ascend_lab.export import ensure_exported

    exported = ensure_exported(cfg, ctx, dtype=cfg.atc.export_dtype)
    compiled = ensure_compiled(cfg, ctx, exported)
    if compiled is None:
        return None
    return RuntimePlan(config, f"{reason} ({compiled.om_path.name})", GraphFile(compiled.om_path, exported.contract),
                       exported, compiled)


def _why_no_om(cfg) -> str:
    atc_where = toolkit.find_atc(cfg.atc.toolkit_home)
    return "atc not found" if atc_where is None else f"no .om from {atc_where}"


_PREPARE = {"model": _model, "onnx": _onnx, "optimized_onnx": _optimized_onnx, "om": _om}


def _auto(cfg, ctx) -> RuntimePlan:
    """acl where pyACL imports and a compiled .om exists, else onnxruntime at its defaults."""
    fallback = OnnxRuntimeConfig()
    acl_ok, acl_why = toolkit.acl_importable()
    if not acl_ok:  # compiling would produce nothing this host can run
        return _PREPARE[fallback.artifact](cfg, ctx, fallback, f"auto: pyACL not importable ({acl_why}); using "
                                                               "onnxruntime")
    plan = _compiled(cfg, ctx, AclRuntimeConfig(), "auto: compiled .om and pyACL available")
    if plan is not None:
        return plan
    return _PREPARE[fallback.artifact](cfg, ctx, fallback, f"auto: pyACL available but no compiled .om "
                                                           f"({_why_no_om(cfg)}); using onnxruntime")
