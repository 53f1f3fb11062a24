"""The runtime interface every implementation (torch, onnxruntime, acl) provides.

A runtime loads one artifact, describes its inputs and outputs, runs feeds of numpy arrays, offers
its generation engine and releases everything it holds; it is a context manager, so every exit path
releases.

Generation over the ``kv_cache`` graph is the same host-side arithmetic on every runtime
(:class:`ascend_lab.runtimes.engine.CacheEngine`); what differs is where the cache lives and how one
execution reaches it, which each runtime supplies as a :class:`CacheBackend`: the cache stays in the
runtime's own (device) memory between executions and only the new tokens' slots are written.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.graph_contract import GraphContract
from ascend_lab.huge_pages import HugePages


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str or -1 marks a dynamic dimension
    dtype: np.dtype


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


class ProfileSession(Protocol):
    """What :meth:`Runtime.profiled` yields: the runtime the profiled pass runs on (the runtime itself, or one
    the profiler needs of its own), a marker for the pass's phases, and, once the ``profiled`` block has exited,
    the traces written (``ascend_lab.profiling.events.TraceFile``; :mod:`ascend_lab.profiling` parses them)."""

    runtime: "Runtime"
    traces: list

    def phase(self, name: str) -> Any:
        """A context manager around one phase of the pass (``prefill``, ``decode``, ``forward``)."""


def no_layer_outputs(runtime: str) -> Exception:
    """What :meth:`CacheBackend.last_layer_hidden` raises on a graph without the debug outputs."""
    from ascend_lab.errors import AscendLabError

    return AscendLabError(f"runtime={runtime}: this graph has no {gc.LAYER_HIDDEN_STATES} output; layer-by-layer "
                          "figures need the kv_cache graph's debug variant (export.layer_outputs=true)")


class Runtime(ABC):
    name: str = "runtime"
    contract: GraphContract
    tokenizer: Any = None  # set where loading the runtime built one (torch)
    # Per-execution splits (pyACL: h2d_ms, npu_compute_ms, d2h_ms, as ais_bench reports them); none elsewhere.
    timings: Mapping[str, list[float]] = MappingProxyType({})
    # What moving the loaded weights to huge pages did (runtimes.select.open_runtime, host memory only).
    huge_pages: "HugePages | None" = None

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute once; returns every output by name, on the host."""

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """A zero-argument call that executes on ``feeds`` (the torch runtime places them on the device once
        and leaves the outputs there)."""
        return lambda: self.run(feeds)

    @abstractmethod
    def cache_backend(self) -> CacheBackend:
        """The kv_cache graph's device-resident cache on this runtime."""

    def engine(self, max_tokens: int, prefill_chunks: tuple[int, ...], capacity_limit: int,
               keep_logits: bool = False) -> Engine:
        """The greedy decode engine of this runtime's graph.

        ``max_tokens`` is the prompt + new tokens one generation needs; ``prefill_chunks`` and
        ``capacity_limit`` are ``export.prefill_chunks`` and ``export.kv_capacity``. ``keep_logits`` (the
        accuracy check): copy every execution's logits to the host (``engine.logits``); only the kv_cache
        graph's :class:`~ascend_lab.runtimes.engine.CacheEngine` does that (and takes given tokens for
        teacher forcing), so with it the engine is always one.
        """
        from ascend_lab.errors import ConfigError
        from ascend_lab.runtimes.engine import CacheEngine, RecomputeEngine

        self.contract.require_generative()
        if self.contract.graph == "logits":
            if keep_logits:
                raise ConfigError("export.graph", self.contract.graph,
                                  "comparing every step's logits (task=accuracy) needs export.graph=kv_cache")
            return RecomputeEngine(self)
        return CacheEngine(self.cache_backend(), self.contract, prefill_chunks, capacity_limit, max_tokens,
                           keep_logits=keep_logits)

    def profiled(self, out_dir, settings) -> Any:
        """A context manager yielding a :class:`ProfileSession`: the runtime's own profiler runs while the block
        does, writing its traces under ``out_dir``; ``settings`` is the ``profile`` group
        (:class:`ascend_lab.config.profile.ProfileConfig`). Every profiling resource is released however the
        block ends. The one hook profiling needs from a runtime (:mod:`ascend_lab.profiling.profiled_pass`)."""
        from ascend_lab.errors import ConfigError

        raise ConfigError("profile.enabled", True, f"runtime={self.name} has no profiler hook; profile with "
                                                   "runtime=torch, onnxruntime or acl")

    @abstractmethod
    def close(self) -> None:
        """Release all resources; safe to call twice."""
