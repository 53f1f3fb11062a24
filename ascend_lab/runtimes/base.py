"""The runtime interface every implementation (torch, onnxruntime, acl) provides.

A runtime loads one artifact (:meth:`Runtime.load`: its own config, the artifact its config's ``artifact``
names, the device), describes its inputs and outputs, runs feeds of numpy arrays, offers its generation
engine and releases everything it holds; it is a context manager, so every exit path releases.

Generation over the ``kv_cache`` graph is the same host-side arithmetic on every runtime
(:class:`ascend_lab.runtimes.engine.CacheEngine`); what differs is where the cache lives and how one
execution reaches it, which each runtime supplies as a :class:`~ascend_lab.runtimes.engine.CacheBackend`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ascend_lab.graph_contract import GraphContract
from ascend_lab.runtimes.engine import CacheBackend, CacheEngine, Engine, RecomputeEngine


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str or -1 marks a dynamic dimension
    dtype: np.dtype


class ProfileSession(Protocol):
    """What :meth:`Runtime.profiled` yields: the runtime the profiled pass runs on (the runtime itself, or one
    the profiler needs of its own), a marker for the pass's phases, and, once the ``profiled`` block has exited,
    the traces written (``ascend_lab.profiling.events.TraceFile``; :mod:`ascend_lab.profiling` parses them)."""

    runtime: "Runtime"
    traces: list

    def phase(self, name: str) -> Any:
        """A context manager around one phase of the pass (``prefill``, ``decode``, ``forward``)."""


class Runtime(ABC):
    name: str = "runtime"
    contract: GraphContract
    tokenizer: Any = None  # set where loading the runtime built one (torch)
    # Per-execution splits (pyACL: h2d_ms, npu_compute_ms, d2h_ms, as ais_bench reports them); none elsewhere.
    timings: Mapping[str, list[float]] = MappingProxyType({})
    # Host threads one execution computes on (onnxruntime's intra-op threads, torch's CPU threads); None where
    # the host does not compute (a device runtime). Reported beside every figure a task logs.
    threads: int | None = None

    @classmethod
    @abstractmethod
    def load(cls, config, artifact, device) -> "Runtime":
        """Load ``artifact`` (what ``config.artifact`` names, made ready by :mod:`ascend_lab.prepare`) on ``device``
        (an ``ascend_lab.device.Device``) with this runtime's own ``config``."""

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

    def engine(self, max_tokens: int, capacity_limit: int, keep_logits: bool = False) -> Engine:
        """The greedy decode engine of this runtime's graph.

        ``max_tokens`` is the prompt + new tokens one generation needs; ``capacity_limit`` is
        ``export.kv_capacity`` (the prefill chunks are the backend's: a compiled artifact's gears, or none). ``keep_logits`` (the
        accuracy check): copy every execution's logits to the host (``engine.logits``); only the kv_cache
        graph's :class:`~ascend_lab.runtimes.engine.CacheEngine` does that (and takes given tokens for
        teacher forcing), so with it the engine is always one.
        """
        from ascend_lab.errors import ConfigError

        self.contract.require_generative()
        if self.contract.graph == "logits":
            if keep_logits:
                raise ConfigError("export.graph", self.contract.graph,
                                  "comparing every step's logits (task=accuracy) needs export.graph=kv_cache")
            return RecomputeEngine(self)
        return CacheEngine(self.cache_backend(), self.contract, capacity_limit, max_tokens,
                           keep_logits=keep_logits)

    def timer(self, device):
        """The clock of one timed call: the host's, as the runtime's calls return when the work is done (onnxruntime,
        pyACL); a runtime whose calls return before the device finishes gives the device's events instead."""
        return device.host_timer

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
