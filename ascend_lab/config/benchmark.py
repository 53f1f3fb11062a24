"""`benchmark` group: what task=bench measures and how long."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, List

from ascend_lab.errors import require, require_choice, require_positive

SCENARIOS = ("forward", "generate")
INPUT_SOURCES = ("random", "prompt")


@dataclass
class BenchmarkConfig:
    group: ClassVar[str] = "benchmark"

    scenario: str = field(
        default="generate",
        metadata={"help": "generate: prefill then exactly new_tokens greedy tokens with the KV cache (TTFT, TPOT, "
                          "decode tokens/s); forward: one pass over [batch, seq_len] (the walkthrough's figure; on "
                          "the kv_cache graph, the prompt's prefill)."},
    )
    batch_size: int = field(default=1, metadata={"help": "Batch of one task=bench job; sweep it with -m."})
    batch_sizes: List[int] = field(
        default_factory=lambda: [1, 4, 8],
        metadata={"help": "Batch sizes task=pipeline measures (and ATC's default dynamic batch gears)."},
    )
    seq_len: int = field(
        default=16,
        metadata={"help": "Tokens per sequence (forward) or prompt length (generate) of the random inputs; "
                          "input_source=prompt uses the prompt's own token count."},
    )
    new_tokens: int = field(
        default=32, metadata={"help": "generate and task=infer: tokens decoded per sequence (exactly; no EOS stop)."},
    )
    warmup: int = field(default=3, metadata={"help": "Untimed iterations first (a generation counts as one)."})
    iterations: int = field(default=10, metadata={"help": "Minimum timed iterations."})
    min_duration_s: float = field(default=1.0, metadata={"help": "Minimum timed seconds (both minimums hold)."})
    input_source: str = field(
        default="random",
        metadata={"help": "random: token ids drawn with the run's seed; prompt: benchmark.prompt through the "
                          "tokenizer, repeated to the batch."},
    )
    prompt: str = field(default="你好,昇腾!", metadata={"help": "Prompt text for input_source=prompt and task=infer."})

    def __post_init__(self) -> None:
        require_choice("benchmark.scenario", self.scenario, SCENARIOS)
        require_choice("benchmark.input_source", self.input_source, INPUT_SOURCES)
        for key in ("batch_size", "seq_len", "new_tokens", "iterations"):
            require_positive(f"benchmark.{key}", getattr(self, key))
        require_positive("benchmark.warmup", self.warmup, allow_zero=True)
        require_positive("benchmark.min_duration_s", self.min_duration_s, allow_zero=True)
        require(math.isfinite(self.min_duration_s), "benchmark.min_duration_s", self.min_duration_s,
                "must be a finite number of seconds (inf would time forever)")
        require(bool(self.prompt), "benchmark.prompt", self.prompt, "must not be empty")
        require(len(self.batch_sizes) > 0 and all(b > 0 for b in self.batch_sizes), "benchmark.batch_sizes",
                self.batch_sizes, "must be a non-empty list of batch sizes > 0")
