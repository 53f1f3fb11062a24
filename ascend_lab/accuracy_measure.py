"""One candidate measured against one reference over the same prompts, judged by the gate: what task=accuracy
reports and what a tuning sweep's bench jobs record (``search.accuracy``).

The candidate is what the usual groups select (``runtime``, ``model.dtype``, ``export.quantize``,
``device``, ``atc.*``); the reference is ``accuracy.reference_*`` (torch, float32, CPU by default). Both are
planned and opened by the same code as every other task (:func:`ascend_lab.prepare.plan_runtime`, export →
op check → compile through the caches; :func:`ascend_lab.prepare.open_engine`), one side at a
time so only one model is in memory. Each prompt is generated alone (batch 1, so an ``.om`` is compiled for
batch 1), teacher-forced and free-running (:mod:`ascend_lab.accuracy.compare`). :func:`layer_report` runs the
same prompts' prefill through the graph's debug variant (``export.layer_outputs``) on both sides.

The reference's (and the layer report's) planning logs its export and compile figures under the prefixes
``reference.`` / ``layers.`` / ``layers.reference.`` so the candidate's ``onnx_sha256``, parity figures
and tags stay the candidate's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ascend_lab.accuracy import compare as cmp
from ascend_lab.accuracy.gate import GATE_METRIC, Verdict, evaluate
from ascend_lab.accuracy.prompts import prompt_texts, tokenize
from ascend_lab.config import AppConfig, check_sequence_fits
from ascend_lab.config.device import DeviceConfig
from ascend_lab.context import JobContext
from ascend_lab.errors import require
from ascend_lab.prepare import open_engine, plan_runtime
from ascend_lab.runtimes.registry import RUNTIME_CONFIGS
from ascend_lab.tracking import Tracker


@dataclass
class Measurement:
    """One candidate measured against its reference (what :func:`measure` returns)."""

    comparison: cmp.Comparison
    verdict: Verdict
    prompts: list[cmp.Prompt]
    precision: str  # the candidate's: the key of its accuracy.gate row
    candidate_cfg: AppConfig
    reference_cfg: AppConfig
    reference_ctx: JobContext
    candidate_text: str  # "onnxruntime int8 on cpu"
    reference_text: str

    @property
    def aggregate(self) -> dict[str, float]:
        """The aggregate figures and the gate's verdict (``accuracy_gate_passed``), as logged."""
        return {**self.comparison.aggregate(), GATE_METRIC: float(self.verdict.passed)}


def measure(cfg: AppConfig, ctx: JobContext, candidate_prefix: str = "",
            reference_prefix: str = "reference.") -> Measurement:
    """Plan both sides, generate every prompt on the reference, then on the candidate (teacher-forced and
    free-running), compare and judge; logs each side's plan as tags (the reference's, and with
    ``candidate_prefix`` the candidate's, under their prefixes) but no figures: the caller records those."""
    acc = cfg.accuracy
    require(cfg.export.graph == "kv_cache", "export.graph", cfg.export.graph,
            "task=accuracy generates through the kv_cache graph's engine (per-step logits, teacher forcing); "
            "use export.graph=kv_cache")
    texts = prompt_texts(acc, ctx.path)  # a bad prompt file fails here, before any export or compile
    candidate_cfg = candidate_config(cfg)
    reference_cfg = reference_config(cfg)
    reference_ctx = side_context(ctx, reference_cfg, reference_prefix, reference_device(cfg))
    candidate_ctx = side_context(ctx, candidate_cfg, candidate_prefix, ctx.device_for(cfg.runtime.name)) \
        if candidate_prefix else ctx
    candidate = plan_runtime(candidate_cfg, candidate_ctx)
    ctx.device_for(candidate.name)  # runtime=acl: the host, torch_npu never imported
    reference = plan_runtime(reference_cfg, reference_ctx)
    precision = precision_of(candidate_cfg, candidate.name)
    candidate_text = f"{candidate.name} {precision} on {ctx.device.label}"
    reference_text = (f"{reference.name} {precision_of(reference_cfg, reference.name)} on "
                      f"{reference_ctx.device.label}")
    reference_ctx.tracker.set_tags({"device": reference_ctx.device.label})
    ctx.tracker.set_tags({"accuracy.precision": precision, "accuracy.candidate": candidate_text,
                          "accuracy.reference": reference_text})
    print(f"candidate: {candidate_text} ({candidate.reason})\nreference: {reference_text} ({reference.reason})")

    capacity = cfg.export.kv_capacity
    with open_engine(reference_cfg, reference_ctx, reference) as loaded:
        runtime = loaded.runtime
        source = "accuracy.prompts_file" if acc.prompts_file else "accuracy.prompts"
        prompts = tokenize(texts, loaded.tokenizer, source)
        longest = max(len(p.ids) for p in prompts)
        check_sequence_fits(cfg.model, longest + acc.new_tokens, "accuracy.new_tokens", acc.new_tokens,
                            f"the longest prompt's {longest} tokens + accuracy.new_tokens")
        reference_side = cmp.decode(runtime, prompts, acc.new_tokens, capacity)
    with open_engine(candidate_cfg, candidate_ctx, candidate) as loaded:
        runtime = loaded.runtime
        teachers = [r.tokens for r in reference_side]
        teacher_forced = cmp.decode(runtime, prompts, acc.new_tokens, capacity, teachers)
        free_running = cmp.decode(runtime, prompts, acc.new_tokens, capacity)
    comparison = cmp.compare(prompts, reference_side, teacher_forced, free_running)
    verdict = evaluate(comparison.aggregate(), acc.gate[precision], precision)
    return Measurement(comparison, verdict, prompts, precision, candidate_cfg, reference_cfg, reference_ctx,
                       candidate_text, reference_text)


def layer_report(ctx: JobContext, candidate_cfg: AppConfig, reference_cfg: AppConfig, reference_ctx: JobContext,
                 prompts: list[cmp.Prompt], tolerance: float) -> cmp.LayerDrift:
    """Plan (export with the layer outputs → op check → compile), open and run the debug variant of both
    sides' graphs, one side at a time, and compare their per-layer hidden states."""
    capacity = candidate_cfg.export.kv_capacity
    hidden = []
    for side_cfg, device, prefix in ((reference_cfg, reference_ctx.device, "layers.reference."),
                                     (candidate_cfg, ctx.device, "layers.")):
        debug_cfg = dataclasses.replace(side_cfg, export=dataclasses.replace(side_cfg.export, layer_outputs=True))
        debug_ctx = side_context(ctx, debug_cfg, prefix, device)
        with open_engine(debug_cfg, debug_ctx) as loaded:
            hidden.append(cmp.layer_hidden(loaded.runtime, prompts, capacity))
    return cmp.layer_drift(hidden[0], hidden[1], tolerance)


# ------------------------------------------------------------------------------------------------
# The two sides


def candidate_config(cfg: AppConfig) -> AppConfig:
    """The candidate: the config as given, at batch 1 (each prompt alone; an .om is compiled for it)."""
    return dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, batch_size=1))


def reference_config(cfg: AppConfig) -> AppConfig:
    """The reference: the candidate's model and export, with ``accuracy.reference_*``'s dtype, quantisation,
    device and runtime; the runtime group at its defaults (the reference is the plain, eager computation:
    no graph capture, no compile)."""
    acc, base = cfg.accuracy, candidate_config(cfg)
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, dtype=acc.reference_dtype),
        export=dataclasses.replace(base.export, quantize=acc.reference_quantize),
        runtime=RUNTIME_CONFIGS[acc.reference_runtime](),
        device=DeviceConfig(name=acc.reference_device, index=cfg.device.index))


def reference_device(cfg: AppConfig):
    from ascend_lab.device import resolve_device

    return resolve_device(DeviceConfig(name=cfg.accuracy.reference_device, index=cfg.device.index))


def precision_of(cfg: AppConfig, runtime: str) -> str:
    """What a side computes in, the key of its ``accuracy.gate`` row: the compiled graph's
    ``atc.export_dtype`` on acl, int8/int4 for a quantised graph on onnxruntime, else ``model.dtype``."""
    if runtime == "acl":
        return cfg.atc.export_dtype
    if runtime == "onnxruntime" and cfg.export.quantize != "none":
        return cfg.export.quantize
    return cfg.model.dtype


def side_context(ctx: JobContext, cfg: AppConfig, prefix: str, device) -> JobContext:
    """The job's ``ctx`` for planning and opening another side: its config, its device, its records under
    ``prefix``."""
    return dataclasses.replace(ctx, cfg=cfg, tracker=PrefixedTracker(ctx.tracker, prefix), _device=device)


class PrefixedTracker(Tracker):
    """Forwards to the job's tracker with metric and tag names under ``prefix`` and artifacts under its folder
    (``reference.`` → ``reference/``): another side's export and compile records beside the candidate's."""

    def __init__(self, inner: Tracker, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix
        self.folder = prefix.rstrip(".").replace(".", "/")
        self.run_id = inner.run_id

    def _path(self, name: str | None) -> str:
        return f"{self.folder}/{name}" if name else self.folder

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.inner.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.inner.set_tags({self.prefix + k: v for k, v in tags.items()})

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(local_path, self._path(artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.inner.log_text(text, self._path(artifact_file))

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        self.inner.log_dict(dictionary, self._path(artifact_file))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.inner.log_figure(figure, self._path(artifact_file))
