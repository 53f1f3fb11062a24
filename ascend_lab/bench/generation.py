"""Greedy decoding over the KV-cache graph I/O convention (see common contracts):

inputs ``input_ids`` [b, s], ``attention_mask`` [b, past+s], ``past_key_values.{i}.key|value``
[b, kv_heads, past, head_dim]; outputs ``logits`` [b, s, vocab], ``present.{i}.key|value``.
Prefill feeds an empty past; every decode step feeds one token and the previous presents.

An *engine* holds one generation's state: ``prefill(input_ids, attention_mask)`` consumes the
prompt and picks the first token, ``step()`` feeds the last token and picks the next,
``generated()`` returns the token ids so far on the host. :class:`FeedsEngine` drives any
:class:`~ascend_lab.runtimes.base.Runtime` through numpy feeds; the torch runtime has its own
engine that keeps tensors on the device. Exactly ``new_tokens`` tokens are produced (no EOS stop),
so every iteration does the same work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from ascend_lab.errors import ConfigError

# numpy has no bfloat16: such caches travel as float32 through numpy feeds.
NUMPY_CACHE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}


@dataclass(frozen=True)
class GraphLayout:
    """What a runtime's graph looks like, enough to build its feeds."""

    graph: str  # hidden_states | logits | kv_cache
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str  # model dtype name (float32, float16, bfloat16)

    @classmethod
    def from_exported(cls, exported) -> "GraphLayout":
        return cls(exported.graph, exported.num_layers, exported.num_kv_heads, exported.head_dim,
                   exported.vocab_size, exported.dtype)

    @classmethod
    def from_model_config(cls, graph: str, config, dtype: str) -> "GraphLayout":
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(graph, config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads,
                   head_dim, config.vocab_size, dtype)

    @property
    def cache_dtype(self):
        return NUMPY_CACHE_DTYPES[self.dtype]

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"] + (self.past_names() if self.graph == "kv_cache" else [])

    def output_names(self) -> list[str]:
        if self.graph == "hidden_states":
            return ["hidden_states"]
        return ["logits"] + (self.present_names() if self.graph == "kv_cache" else [])

    def empty_past(self, batch: int, past_len: int = 0) -> dict[str, np.ndarray]:
        shape = (batch, self.num_kv_heads, past_len, self.head_dim)
        return {name: np.zeros(shape, dtype=self.cache_dtype) for name in self.past_names()}

    def forward_feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                      past_len: int = 0) -> dict[str, np.ndarray]:
        """One pass over the prompt: for the kv_cache graph, a prefill with an empty past.

        ``past_len`` > 0 is for graphs compiled with a fixed past length (ATC rejects 0-sized
        dims): that many zero positions, masked out, so the result is still the prefill's (positions
        come from the mask, and masked keys get no attention).
        """
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.graph == "kv_cache":
            batch = input_ids.shape[0]
            if past_len:
                hidden = np.zeros((batch, past_len), dtype=attention_mask.dtype)
                feeds["attention_mask"] = np.concatenate([hidden, attention_mask], axis=1)
            feeds.update(self.empty_past(batch, past_len))
        return feeds

    def require_generative(self) -> None:
        if self.graph == "hidden_states":
            raise ConfigError("export.graph", self.graph,
                              "the hidden_states graph has no logits to pick tokens from; generation needs "
                              "export.graph=kv_cache (or logits)")


def fixed_past_len(specs) -> int:
    """The past length a runtime's inputs fix (an ATC-compiled static shape), else 0."""
    for spec in specs:
        if spec.name.startswith("past_key_values.") and len(spec.shape) == 4:
            dim = spec.shape[2]
            if isinstance(dim, int) and dim > 0:
                return dim
    return 0


class Engine(Protocol):
    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None: ...

    def step(self) -> None: ...

    def generated(self) -> np.ndarray: ...


class FeedsEngine:
    """Greedy decoding through ``runtime.run`` with numpy feeds (onnxruntime, pyACL, torch.run)."""

    def __init__(self, runtime, layout: GraphLayout) -> None:
        layout.require_generative()
        self.runtime, self.layout = runtime, layout
        self._tokens: list[np.ndarray] = []

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        self._tokens = []
        self._past = None
        feeds = self.layout.forward_feeds(input_ids, attention_mask, fixed_past_len(self.runtime.inputs))
        self._ids, self._mask = input_ids, feeds["attention_mask"]
        self._advance(feeds)

    def step(self) -> None:
        last = self._tokens[-1][:, None]
        ones = np.ones_like(last, dtype=self._mask.dtype)
        self._mask = np.concatenate([self._mask, ones], axis=1)
        if self.layout.graph == "kv_cache":
            feeds = {"input_ids": last, "attention_mask": self._mask, **self._past}
        else:  # logits graph: no cache, the whole sequence again
            self._ids = np.concatenate([self._ids, last], axis=1)
            feeds = {"input_ids": self._ids, "attention_mask": self._mask}
        self._advance(feeds)

    def _advance(self, feeds: dict[str, np.ndarray]) -> None:
        outputs = self.runtime.run(feeds)
        if self.layout.graph == "kv_cache":
            self._past = {past: outputs[present]
                          for past, present in zip(self.layout.past_names(), self.layout.present_names())}
        self._tokens.append(np.argmax(outputs["logits"][:, -1, :], axis=-1).astype(np.int64))

    def generated(self) -> np.ndarray:
        return np.stack(self._tokens, axis=1)


@dataclass(frozen=True)
class GenerationResult:
    tokens: np.ndarray  # [batch, new_tokens] int64
    ttft_ms: float  # prefill + first token
    step_ms: list[float]  # each later token (new_tokens - 1 values)

    @property
    def decode_ms(self) -> float:
        return float(sum(self.step_ms))


def greedy_generate(engine: Engine, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int,
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
