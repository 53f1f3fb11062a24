"""Timing a greedy generation: :func:`greedy_generate` runs one generation on an engine
(:class:`ascend_lab.runtimes.engine.Engine`, any runtime's) and reads each token's time.

TTFT is the prefill — however many graph executions the prompt takes — plus the first token's pick;
each later token is one decode step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class GenerationResult:
    tokens: np.ndarray  # [batch, new_tokens] int64
    ttft_ms: float  # prefill + first token
    step_ms: list[float]  # each later token (new_tokens - 1 values)

    @property
    def decode_ms(self) -> float:
        return float(sum(self.step_ms))


def greedy_generate(engine, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int,
                    timer: Callable[[], object]) -> GenerationResult:
    """Exactly ``new_tokens`` greedy tokens per row; each token's time read with ``timer``."""
    with timer() as t:
        engine.prefill(input_ids, attention_mask)
    ttft_ms = t.elapsed_ms
    step_ms = []
    for _ in range(new_tokens - 1):
        with timer() as t:
            engine.step()
        step_ms.append(t.elapsed_ms)
    return GenerationResult(engine.generated(), ttft_ms, step_ms)
