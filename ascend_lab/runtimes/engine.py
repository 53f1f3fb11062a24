"""Greedy generation engines, the same on every runtime.

:class:`CacheEngine` drives the ``kv_cache`` graph through a runtime's :class:`CacheBackend`: the prompt
runs in one execution where the graph takes any length, or on a compiled artifact is left-padded to whole
prefill chunks (its gears) and fed a chunk per execution (largest first); then one token per execution;
positions, cache slots and pad counts are computed on the host once (:mod:`ascend_lab.graph_contract`), and
the cache never leaves the backend. Every runtime therefore executes the same sequence of graph calls with the
same inputs, which is what makes their tokens comparable.

:class:`RecomputeEngine` generates with the cache-less ``logits`` graph: each token re-reads the whole
sequence (what that graph is for: a check, not a deployment).

Exactly ``new_tokens`` tokens are produced per generation (no EOS stop), so every iteration does the
same work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.errors import AscendLabError, ConfigError

# Capacity granularity where the backend allocates on demand: a little headroom means a slightly
# longer prompt does not reallocate the cache.
CAPACITY_ALIGN = 16


@dataclass
class Traffic:
    """Bytes and calls between host and device, as the runtime issued them (pyACL counts them; the
    torch and onnxruntime backends on the CPU have no such boundary and leave them at 0)."""

    h2d_bytes: int = 0
    d2h_bytes: int = 0
    d2d_bytes: int = 0
    calls: int = 0  # every runtime API call (pyACL: acl.* calls)
    by_call: dict[str, int] = field(default_factory=dict)

    def count(self, call: str, h2d: int = 0, d2h: int = 0, d2d: int = 0) -> None:
        self.h2d_bytes += h2d
        self.d2h_bytes += d2h
        self.d2d_bytes += d2d
        self.calls += 1
        self.by_call[call] = self.by_call.get(call, 0) + 1

    def snapshot(self) -> dict[str, int]:
        return {"h2d_bytes": self.h2d_bytes, "d2h_bytes": self.d2h_bytes, "d2d_bytes": self.d2d_bytes,
                "calls": self.calls}


class Engine(Protocol):
    """One generation's state: ``prefill`` consumes the prompt and picks the first token, ``step`` feeds
    the last token and picks the next, ``generated`` returns the token ids so far on the host."""

    notes: list[str]
    traffic: Traffic | None  # host↔device bytes and runtime calls, where the runtime counts them
    prefill_executions: int  # graph executions the last prompt took

    def prepare(self, batch: int, prompt_len: int, new_tokens: int) -> None: ...

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None: ...

    def step(self) -> None: ...

    def generated(self) -> np.ndarray: ...


class CacheBackend(Protocol):
    """Where one runtime keeps the kv_cache graph's cache and how it runs one execution over it."""

    traffic: Traffic
    fixed_capacity: int | None  # compiled into the artifact (an .om), else None: allocated as needed
    seq_gears: tuple[int, ...] | None  # the only seq lengths the artifact runs, else None: any
    batch: int  # of the allocated cache (0: none yet)
    capacity: int  # slots of the allocated cache

    def allocate(self, batch: int, capacity: int) -> None:
        """A new zeroed cache of ``capacity`` slots for ``batch`` rows (zeroed once: slots a generation has
        not written are masked, and stale finite values from an earlier one are harmless, but never-
        initialised memory could hold NaN, which a zero attention weight would still spread)."""

    def execute(self, input_ids: Any, position_ids: np.ndarray, past_length: int,
                pad_lengths: np.ndarray | None) -> Any:
        """Run the graph on the new tokens, write their keys/values into cache slots
        ``[past_length, past_length + seq)`` and return the next tokens [batch] in the backend's own form.
        ``input_ids``: [batch, seq] int64 numpy, or the [batch] tokens the last call returned (one step);
        ``pad_lengths`` None: unchanged since the last call."""

    def to_host(self, tokens: Any) -> np.ndarray:
        """Tokens returned by :meth:`execute` as int64 numpy."""

    # Optional (torch and onnxruntime): what iteration-level batching (:mod:`ascend_lab.serve.scheduler`) needs to
    # place a prompt prefilled apart into one row of a running batch, and to slide the rows along the slots.

    def read_slots(self, start: int, stop: int, row: int | None = None) -> Any:
        """A copy of cache slots ``[start, stop)`` of ``row`` ([stop - start, 2·layers, kv_heads, dim]) or of every
        row (``row`` None: [stop - start, batch, ...]), in the backend's own form (what :meth:`write_slots` takes)."""

    def write_slots(self, start: int, values: Any, row: int | None = None) -> None:
        """Write ``values`` (from :meth:`read_slots` of a backend of the same runtime) into the slots from ``start``
        of ``row``, or of every row."""

    def last_logits(self) -> np.ndarray:
        """The last execution's logits [batch, vocab] on the host (a copy from the device)."""

    def last_layer_hidden(self) -> np.ndarray:
        """The last execution's ``layer_hidden_states`` [layers, batch, hidden] on the host: each decoder
        layer's hidden state at the last position, an output of the graph's debug variant only
        (``export.layer_outputs``; :func:`no_layer_outputs` otherwise)."""


def no_layer_outputs(runtime: str) -> Exception:
    """What :meth:`CacheBackend.last_layer_hidden` raises on a graph without the debug outputs."""
    from ascend_lab.errors import AscendLabError

    return AscendLabError(f"runtime={runtime}: this graph has no {gc.LAYER_HIDDEN_STATES} output; layer-by-layer "
                          "figures need the kv_cache graph's debug variant (export.layer_outputs=true)")


def engine_for(runtime, export, max_tokens: int, tracker=None, keep_logits: bool = False) -> Engine:
    """``runtime``'s generation engine (:meth:`~ascend_lab.runtimes.base.Runtime.engine`) for ``max_tokens`` (prompt +
    new tokens) with ``export.kv_capacity``; its kind and notes become ``engine`` /
    ``engine.notes`` tags on ``tracker`` where one is given."""
    engine = runtime.engine(max_tokens, export.kv_capacity, keep_logits=keep_logits)
    if tracker is not None:
        tracker.set_tags({"engine": type(engine).__name__,
                          **({"engine.notes": "; ".join(engine.notes)} if engine.notes else {})})
    return engine


def prefill_chunks_of(backend: CacheBackend) -> tuple[int, ...] | None:
    """The chunk sizes a prompt is fed in on ``backend``: a compiled artifact's gears above 1 (it runs nothing
    else; ``export.prefill_chunks`` chose them at compile time), or None where the graph takes any sequence length
    (onnxruntime, torch): the prompt then runs in ONE execution (:func:`~ascend_lab.graph_contract.plan_prefill`),
    since on a CPU every execution streams every weight and chunking only multiplies that."""
    gears = backend.seq_gears
    if gears is None:
        return None
    if 1 not in gears:
        raise AscendLabError(f"the compiled graph has no 1-token gear for decode steps (gears {list(gears)});"
                             " compile it with atc.dynamic_mode=auto")
    return tuple(sorted(g for g in gears if g > 1)) or (1,)


def bounded_prefill_plan(prompt_len: int, new_tokens: int, chunks: tuple[int, ...] | None,
                         capacity: int) -> gc.PrefillPlan:
    """The prefill plan of a prompt (:func:`~ascend_lab.graph_contract.plan_prefill`), its padding bounded by the
    cache slots that ``new_tokens`` leave of ``capacity``."""
    return gc.plan_prefill(prompt_len, chunks, capacity - max(new_tokens - 1, 0))


class CacheEngine:
    def __init__(self, backend: CacheBackend, contract: gc.GraphContract, capacity_limit: int,
                 max_tokens: int = 0, keep_logits: bool = False) -> None:
        contract.require_generative()
        self.backend, self.contract = backend, contract
        self.traffic = backend.traffic
        self.prefill_chunks = prefill_chunks_of(backend)
        self.capacity_limit = backend.fixed_capacity or capacity_limit
        self.max_tokens = max_tokens  # prompt + new tokens a generation is expected to need (sizes the cache)
        self.keep_logits = keep_logits  # copy each execution's logits to the host (accuracy checks)
        self.logits: list[np.ndarray] = []
        chunking = (f"prefill chunks {list(self.prefill_chunks)}" if self.prefill_chunks is not None
                    else "prefill in one execution per prompt (any length)")
        self.notes: list[str] = [f"kv_cache engine: {chunking}, cache capacity "
                                 + (f"{backend.fixed_capacity} (compiled)" if backend.fixed_capacity
                                    else f"allocated as needed up to {capacity_limit}")]
        self._tokens: list = []
        self.prefill_executions = 0

    # -- sizing ---------------------------------------------------------------------------------

    def plan(self, prompt_len: int, new_tokens: int) -> gc.PrefillPlan:
        """The prefill plan (one execution where the graph takes any length), its padding bounded by the cache
        slots the generation leaves for the prompt."""
        return bounded_prefill_plan(prompt_len, new_tokens, self.prefill_chunks, self.capacity_limit)

    def slots_needed(self, prompt_len: int, new_tokens: int) -> int:
        """Cache slots one generation uses: the padded prompt and every generated token but the last."""
        return self.plan(prompt_len, new_tokens).padded_len + max(new_tokens - 1, 0)

    def prepare(self, batch: int, prompt_len: int, new_tokens: int) -> None:
        """Allocate the cache for this shape now (outside any timing)."""
        needed = self.slots_needed(prompt_len, new_tokens)
        if needed > self.capacity_limit:
            padded_len = self.plan(prompt_len, new_tokens).padded_len
            padded = f" (padded to whole prefill chunks: {padded_len})" if padded_len != prompt_len else ""
            raise ConfigError(
                "export.kv_capacity", self.capacity_limit,
                f"a {prompt_len}-token prompt{padded} plus {new_tokens} new tokens "
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
