"""`accuracy` group: task=accuracy, one candidate against one reference over the same prompts.

The *candidate* is what the usual groups select (``runtime``, ``model.dtype``, ``export.quantize``,
``device``, ``atc.*`` for acl); the *reference* is described here (torch, float32, on the CPU by default).
So "compare X against Y" is one command: ``python -m ascend_lab.run task=accuracy runtime=onnxruntime
export.quantize=int8`` compares the int8 graph on onnxruntime with float32 PyTorch on the CPU.

The gate's thresholds depend on what the candidate computes in (its *precision*: ``int8`` for an
``export.quantize=int8`` graph on onnxruntime, ``atc.export_dtype`` for a compiled ``.om``, else
``model.dtype``), so each precision has its own row in ``accuracy.gate``; the defaults below are the
documented ones, overridden per key (``accuracy.gate.int8.min_top1_agreement=0.8``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional

from ascend_lab.config.device import DEVICE_NAMES
from ascend_lab.config.export import QUANTIZE_MODES
from ascend_lab.config.model import MODEL_DTYPES
from ascend_lab.errors import require, require_choice, require_positive

REFERENCE_RUNTIMES = ("torch", "onnxruntime", "acl")
LAYER_REPORT_MODES = ("never", "on_failure", "always")
# What a candidate computes in: the model dtypes, and int8/int4 for an export.quantize=int8/int4 graph.
PRECISIONS = (*MODEL_DTYPES, "int8", "int4")


@dataclass
class GateThresholds:
    """What the gate accepts from a candidate of one precision (teacher-forced figures: both sides see the
    reference's tokens, so every step compares the same context)."""

    min_cosine: float = field(
        default=0.9999,
        metadata={"help": "The smallest cosine similarity of a step's logits (candidate vs reference, over all "
                          "prompts and steps) allowed; in [-1, 1]. The most robust figure: it ignores a common "
                          "scale and is not fooled by near-ties."})
    min_top1_agreement: float = field(
        default=0.98,
        metadata={"help": "The smallest share of steps (over all prompts) whose greedy token is the reference's; in "
                          "[0, 1]. What a user sees, but with random weights logit margins are tiny and "
                          "near-ties flip, so it is only meaningful with real checkpoints."})
    max_mean_kl: float = field(
        default=1e-4,
        metadata={"help": "The largest mean KL(reference ‖ candidate) of the next-token distributions (nats, over "
                          "all prompts and steps) allowed; ≥ 0."})
    layer_tolerance: float = field(
        default=1e-3,
        metadata={"help": "Layer report: the relative error of a decoder layer's hidden state (‖Δ‖ / ‖reference‖ "
                          "at the prompt's last position, worst prompt) above which that layer counts as drifting; "
                          "> 0. The report names the first such layer."})


def default_gates() -> dict[str, GateThresholds]:
    """The documented per-precision defaults. float32 candidates (another runtime or device running the same
    float32 graph) differ only by summation order: cosine ≈ 1 − 1e-12, KL ≈ 1e-15, relative layer error
    ≈ 1e-6, so anything visible is a bug. float16 rounds every op (Qwen2.5-0.5B shapes: cosine 0.999998,
    layer error 0.1–0.2 %); bfloat16 keeps 8 mantissa bits (≈ 4e-3 per op); int8 weight quantisation moves
    every matmul by about 1 % (Qwen2.5-0.5B shapes: worst-step cosine 0.9988, mean KL 3e-4, layer error
    2–5 % growing with depth, top-1 0.89 with random weights, whose near-ties flip; tiny_qwen: cosine
    0.99992, top-1 0.97); 4-bit weights (MatMulNBits, block 32) move them about ten times more (tiny_qwen: worst-step
    cosine 0.989, mean KL 2e-4, layer error up to 9 %, top-1 0.65–0.77 with random weights). The top-1 floors leave
    room for near-ties and still catch a collapse."""
    return {
        "float32": GateThresholds(),  # the field defaults
        "float16": GateThresholds(min_cosine=0.999, min_top1_agreement=0.95, max_mean_kl=5e-3, layer_tolerance=2e-2),
        "bfloat16": GateThresholds(min_cosine=0.99, min_top1_agreement=0.90, max_mean_kl=2e-2, layer_tolerance=5e-2),
        "int8": GateThresholds(min_cosine=0.99, min_top1_agreement=0.85, max_mean_kl=5e-2, layer_tolerance=1e-1),
        "int4": GateThresholds(min_cosine=0.98, min_top1_agreement=0.5, max_mean_kl=5e-2, layer_tolerance=0.3),
    }


# Built-in prompts: short, Chinese and English, prose and code (a tokenizer splits each differently).
DEFAULT_PROMPTS = (
    "你好,昇腾!",
    "The capital of France is",
    "请用一句话介绍一下你自己。",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
)


@dataclass
class AccuracyConfig:
    group: ClassVar[str] = "accuracy"

    reference_runtime: str = field(
        default="torch",
        metadata={"help": "The reference's runtime: torch (the PyTorch model, eager), onnxruntime or acl. It is "
                          "planned and opened like the candidate (export, op check, compile through their caches)."})
    reference_dtype: str = field(
        default="float32",
        metadata={"help": "The reference's model.dtype (float32, float16, bfloat16); acl computes in "
                          "atc.export_dtype whatever this says."})
    reference_quantize: str = field(
        default="none", metadata={"help": "The reference's export.quantize (none, int8, int4): onnxruntime only."})
    reference_device: str = field(
        default="cpu",
        metadata={"help": "The reference's device (auto, cpu, cuda, npu; index: device.index). cpu by default, so a "
                          "candidate on the NPU or GPU is measured against the CPU."})
    prompts: List[str] = field(
        default_factory=lambda: list(DEFAULT_PROMPTS),
        metadata={"help": "The prompts both sides generate from, each alone (batch 1). Default: five short ones, "
                          "Chinese and English, prose and code."})
    prompts_file: Optional[str] = field(
        default=None,
        metadata={"help": "A UTF-8 text file with one prompt per line (blank lines skipped) used instead of "
                          "accuracy.prompts; a relative path is taken from the launch directory."})
    new_tokens: int = field(
        default=32,
        metadata={"help": "Tokens generated per prompt on each side (step 0 is the prompt's prefill)."})
    layer_report: str = field(
        default="on_failure",
        metadata={"help": "When to run the layer report (the debug graph with every decoder layer's hidden state, "
                          "on both sides; names the first layer over the precision's layer_tolerance): never, "
                          "on_failure (of the gate) or always."})
    gate: Dict[str, GateThresholds] = field(
        default_factory=default_gates,
        metadata={"help": "Thresholds per candidate precision (float32, float16, bfloat16, int8, int4); see "
                          "default_gates() for the defaults and why. A failed gate ends the run with a non-zero "
                          "exit after everything is logged."})

    def __post_init__(self) -> None:
        require_choice("accuracy.reference_runtime", self.reference_runtime, REFERENCE_RUNTIMES)
        require_choice("accuracy.reference_dtype", self.reference_dtype, MODEL_DTYPES)
        require_choice("accuracy.reference_quantize", self.reference_quantize, QUANTIZE_MODES)
        require_choice("accuracy.reference_device", self.reference_device, DEVICE_NAMES)
        require_choice("accuracy.layer_report", self.layer_report, LAYER_REPORT_MODES)
        require_positive("accuracy.new_tokens", self.new_tokens)
        require(self.prompts_file is not None or (len(self.prompts) > 0 and all(p.strip() for p in self.prompts)),
                "accuracy.prompts", self.prompts,
                "must list at least one non-empty prompt (or set accuracy.prompts_file)")
        require(self.prompts_file is None or bool(self.prompts_file.strip()), "accuracy.prompts_file",
                self.prompts_file, "must name a file (or be null: use accuracy.prompts)")
        require(sorted(self.gate) == sorted(PRECISIONS), "accuracy.gate", sorted(self.gate),
                f"must have one entry per precision: {', '.join(PRECISIONS)}")
        for precision, limits in self.gate.items():
            key = f"accuracy.gate.{precision}"
            require(-1.0 <= limits.min_cosine <= 1.0, f"{key}.min_cosine", limits.min_cosine,
                    "a cosine similarity is between -1 and 1")
            require(0.0 <= limits.min_top1_agreement <= 1.0, f"{key}.min_top1_agreement", limits.min_top1_agreement,
                    "an agreement is a share of steps, between 0 and 1")
            require(limits.max_mean_kl >= 0.0, f"{key}.max_mean_kl", limits.max_mean_kl,
                    "a KL divergence is ≥ 0 (inf: no limit)")
            require(limits.layer_tolerance > 0.0 and math.isfinite(limits.layer_tolerance), f"{key}.layer_tolerance",
                    limits.layer_tolerance, "must be a relative error > 0")
