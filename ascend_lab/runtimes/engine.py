"""Greedy generation engines, the same on every runtime.

:class:`CacheEngine` drives the ``kv_cache`` graph through a runtime's :class:`CacheBackend`: the prompt
is left-padded to whole prefill chunks and fed a chunk per execution (largest first), then one token
per execution; positions, cache slots and pad counts are computed on the host once
(:mod:`ascend_lab.graph_contract`), and the cache never leaves the backend. Every runtime therefore
executes the same sequence of graph calls with the same inputs, which is what makes their tokens
comparable.

:class:`RecomputeEngine` generates with the cache-less ``logits`` graph: each token re-reads the whole
sequence (what that graph is for: a check, not a deployment).

Exactly ``new_tokens`` tokens are produced per generation (no EOS stop), so every iteration does the
same work.
"""

from __future__ import annotations

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.errors import AscendLabError, ConfigError
from ascend_lab.runtimes.base import CacheBackend

# Capacity granularity where the backend allocates on demand: a little headroom means a slightly
# longer prompt does not reallocate the cache.
CAPACITY_ALIGN = 16


class CacheEngine:
    def __init__(self, backend: CacheBackend, contract: gc.GraphContract, prefill_chunks, capacity_limit: int,
                 max_tokens: int = 0, keep_logits: bool = False) -> None:
        contract.require_generative()
        self.backend, self.contract = backend, contract
        self.traffic = backend.traffic
        gears = backend.seq_gears
        if gears is not None:
            # A compiled artifact runs only its gears: the prefill chunks it has, and 1 for decode steps.
            if 1 not in gears:
                raise AscendLabError(f"the compiled graph has no 1-token gear for decode steps (gears {list(gears)});"
                                     " compile it with atc.dynamic_mode=auto")
            prefill_chunks = tuple(g for g in gears if g > 1) or (1,)
        self.prefill_chunks = tuple(sorted(set(prefill_chunks)))
        self.capacity_limit = backend.fixed_capacity or capacity_limit
        self.max_tokens = max_tokens  # prompt + new tokens a generation is expected to need (sizes the cache)
        self.keep_logits = keep_logits  # copy each execution's logits to the host (accuracy checks)
        self.logits: list[np.ndarray] = []
        self.notes: list[str] = [f"kv_cache engine: prefill chunks {list(self.prefill_chunks)}, cache capacity "
                                 + (f"{backend.fixed_capacity} (compiled)" if backend.fixed_capacity
                                    else f"allocated as needed up to {capacity_limit}")]
        self._tokens: list = []
        self.prefill_executions = 0

    # -- sizing ---------------------------------------------------------------------------------

    def plan(self, prompt_len: int, new_tokens: int) -> gc.PrefillPlan:
        """The prefill plan, its padding bounded by the cache slots the generation leaves for the prompt."""
        return gc.plan_prefill(prompt_len, self.prefill_chunks, self.capacity_limit - max(new_tokens - 1, 0))

    def slots_needed(self, prompt_len: int, new_tokens: int) -> int:
        """Cache slots one generation uses: the padded prompt and every generated token but the last."""
        return self.plan(prompt_len, new_tokens).padded_len + max(new_tokens - 1, 0)

    def prepare(self, batch: int, prompt_len: int, new_tokens: int) -> None:
        """Allocate the cache for this shape now (outside any timing)."""
        needed = self.slots_needed(prompt_len, new_tokens)
        if needed > self.capacity_limit:
            raise ConfigError(
                "export.kv_capacity", self.capacity_limit,
                f"a {prompt_len}-token prompt (padded to whole prefill chunks: "
                f"{self.plan(prompt_len, new_tokens).padded_len}) plus {new_tokens} new tokens "
                f"needs {needed} cache slots; raise export.kv_capacity (and compile again) or shorten "
                "benchmark.seq_len / benchmark.new_tokens")
        if self.backend.batch == batch and self.backend.capacity >= needed:
            return  # the cache of an earlier generation serves (its stale slots are masked out)
        capacity = self.backend.fixed_capacity or min(-(-needed // CAPACITY_ALIGN) * CAPACITY_ALIGN,
                                                      self.capacity_limit)
        self.backend.allocate(batch, capacity)

    # -- Engine protocol -----------------------------------------------------------------------

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        batch, prompt_len = input_ids.shape
        try:
            pads = gc.left_pad_lengths(attention_mask)
        except ValueError as exc:
            raise AscendLabError(f"generation: {exc}") from None
        new_tokens = max(self.max_tokens - prompt_len, 1)
        plan = self.plan(prompt_len, new_tokens)
        # A no-op when prepare() already sized the cache for this generation.
        self.prepare(batch, prompt_len, new_tokens)
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if plan.extra_pad:
            ids = np.concatenate([np.zeros((batch, plan.extra_pad), dtype=np.int64), ids], axis=1)
        self._pads = pads + plan.extra_pad
        self._tokens, self.logits = [], []
        written, first = 0, True
        for size in plan.chunks:
            token = self._execute(ids[:, written:written + size], written, self._pads if first else None)
            written += size
            first = False
        self._written = written
        self.prefill_executions = len(plan.chunks)
        self._tokens.append(token)

    def step(self, tokens: np.ndarray | None = None) -> None:
        """Feed the last picked tokens and pick the next (greedy decoding), or with ``tokens`` ([batch] int64)
        feed those instead: teacher forcing, where both sides of an accuracy comparison are fed the
        reference's tokens so that one early flip does not change every later input. ``generated()`` keeps
        this engine's own picks either way."""
        if not self._tokens:
            raise RuntimeError("step() before prefill()")
        if self._written >= self.backend.capacity:
            raise AscendLabError(f"the KV cache is full ({self.backend.capacity} slots after the prompt and "
                                 f"{len(self._tokens) - 1} steps): size it for the whole generation with the "
                                 "engine's max_tokens or prepare(batch, prompt_len, new_tokens)")
        if tokens is not None:
            tokens = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
            if tokens.shape[0] != self.backend.batch:
                raise ValueError(f"step(tokens): {tokens.shape[0]} tokens for a batch of {self.backend.batch}")
        token = self._execute(self._tokens[-1] if tokens is None else tokens, self._written, None)
        self._written += 1
        self._tokens.append(token)

    def generated(self) -> np.ndarray:
        return np.stack([self.backend.to_host(t) for t in self._tokens], axis=1)

    def last_layer_hidden(self) -> np.ndarray:
        """The last execution's per-layer hidden states [layers, batch, hidden] (the graph's debug variant)."""
        return self.backend.last_layer_hidden()

    def _execute(self, input_ids, past_length: int, pads: np.ndarray | None):
        """``input_ids``: [batch, seq] numpy, or the [batch] tokens the last execution returned."""
        seq = input_ids.shape[1] if input_ids.ndim == 2 else 1
        positions = gc.positions(past_length, seq, self._pads)
        token = self.backend.execute(input_ids, positions, past_length, pads)
        if self.keep_logits:
            self.logits.append(self.backend.last_logits())
        return token


class RecomputeEngine:
    """Greedy decoding with the cache-less logits graph: the whole sequence again for every token."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.traffic = None
        self.prefill_executions = 1
        self.notes = ["logits graph: no cache, every token re-reads the whole sequence"]
        self._tokens: list[np.ndarray] = []

    def prepare(self, batch: int, prompt_len: int, new_tokens: int) -> None:
        pass

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        self._ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        self._mask = np.ascontiguousarray(attention_mask, dtype=np.int64)
        self._tokens = []
        self._advance()

    def step(self) -> None:
        last = self._tokens[-1][:, None]
        self._ids = np.concatenate([self._ids, last], axis=1)
        self._mask = np.concatenate([self._mask, np.ones_like(last)], axis=1)
        self._advance()

    def _advance(self) -> None:
        logits = self.runtime.run({gc.INPUT_IDS: self._ids, gc.ATTENTION_MASK: self._mask})[gc.LOGITS]
        self._tokens.append(np.argmax(logits[:, -1, :], axis=-1).astype(np.int64))

    def generated(self) -> np.ndarray:
        return np.stack(self._tokens, axis=1)
