"""A static-KV-cache greedy decoder for Qwen2-class models whose decode step can be captured as
one device graph (CUDA graphs / torch_npu NPU graphs) and fused by ``torch.compile``.

Why: eager PyTorch decoding of a 1.8B model is launch-bound, not bandwidth-bound (about a
thousand small kernels per token with Hugging Face
``generate``). Graph capture removes the per-kernel host launch cost and ``torch.compile`` cuts the
kernel count; the same design as pytorch-labs/gpt-fast (`generate.py`: a compiled one-token step over a
cache written in place).

What makes the step capturable: every buffer is allocated once per (batch, capacity) and only
mutated in place, and everything that changes per step lives on the device — the last token, each
row's rotary position, the cache slot being written (a one-element index tensor for
``index_copy_``), the additive attention mask over the whole cache (padding and empty slots hold
the dtype's minimum; the step unmasks its own slot) and a token history. No step reads a value
back to the host, so a replayed graph does exactly what the eager step does.

The engine reuses the Hugging Face module weights as they are (no copies) and computes with the
same operations as ``transformers``' Qwen2 code (RMSNorm in float32, rotary from the model's own
``inv_freq``, SiLU MLP), so in float32 its greedy tokens are the model's. It implements the
:class:`ascend_lab.runtimes.engine.Engine` protocol.

Backends: ``graph_capture`` uses ``torch.<kind>.<KIND>Graph`` and ``torch.<kind>.graph``
(``torch.cuda.CUDAGraph`` / ``torch.npu.NPUGraph``, same capture/replay semantics). On the CPU
there is no graph API: the engine runs the same step eagerly and records why in ``notes`` (and the
log), so ``runtime.graph_capture=true`` never fails a CPU run. ``compile`` applies
``torch.compile(fullgraph=True, dynamic=False)`` before capture: ``compile_scope="layer"`` (default)
compiles one decoder layer that all layers share (weights are arguments; compile time of one
layer), ``"step"`` the whole step (cross-layer fusion, a graph as large as the model to compile).
On an NPU that needs a torch_npu whose default compile backend works there.

Benchmarks call :meth:`StaticDecoderEngine.prepare` once per shape before timing, so the compile
and capture cost stays out of the measured iterations (otherwise it lands in the first step).

The math is :mod:`ascend_lab.qwen2`'s (shared with the exported generation graph). This module imports
no Hydra, MLflow or onnx, so the standalone GPU check script can use it on a machine with only torch
and transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.errors import AscendLabError, ToolchainError
from ascend_lab.qwen2 import LayerWeights, apply_rotary, mlp_block, project, read_qwen2, rms_norm, rotary
from ascend_lab.runtimes.engine import CAPACITY_ALIGN  # also what efficient-attention kernels want of the mask

log = logging.getLogger(__name__)

COMPILE_SCOPES = ("layer", "step")


def decode_layer(h, cos, sin, mask, write, k_cache, v_cache, w, eps: float, heads: int, kv_heads: int,
                 head_dim: int, scaling: float):
    """One decoder layer for one token per row: writes its K/V at slot ``write`` and attends over
    the whole static cache under the additive ``mask`` [b, 1, 1, capacity]."""
    import torch.nn.functional as F

    b = h.shape[0]
    x = rms_norm(h, w.input_norm, eps)
    q, k, v = project(x, w, heads, kv_heads, head_dim, b, 1)
    q, k = apply_rotary(q, cos, sin, head_dim), apply_rotary(k, cos, sin, head_dim)
    k_cache.index_copy_(2, write, k)
    v_cache.index_copy_(2, write, v)
    # GQA without copying the cache: the query heads sharing a KV head (transformers' repeat_kv
    # maps head j to KV head j // group) become that head's `group` query rows; with one token per
    # row they all see the same mask.
    group = heads // kv_heads
    q = q.reshape(b, kv_heads, group, head_dim)
    out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, scale=scaling)
    h = h + F.linear(out.reshape(b, 1, heads * head_dim), w.o_weight)
    return mlp_block(h, w, eps)


def decode_prologue(token, pos, write, mask, embed_weight, inv_freq, attention_scaling: float):
    """Embed the last tokens, unmask the slot being written, rotary for each row's position."""
    import torch.nn.functional as F

    mask.index_fill_(3, write, 0.0)
    h = F.embedding(token.unsqueeze(1), embed_weight)
    cos, sin = rotary(pos.unsqueeze(1), inv_freq, attention_scaling, h.dtype)
    return h, cos, sin


def decode_epilogue(h, norm_weight, eps: float, lm_weight, lm_bias, token, pos, write, history):
    """Greedy pick into the static token buffers; advance the device-side counters."""
    import torch.nn.functional as F

    logits = F.linear(rms_norm(h[:, -1], norm_weight, eps), lm_weight, lm_bias)
    nxt = logits.argmax(dim=-1)
    history.index_copy_(1, write + 1, nxt.unsqueeze(1))
    token.copy_(nxt)
    pos.add_(1)
    write.add_(1)


def _repeat_kv(x, group: int):
    if group == 1:
        return x
    b, kv_heads, s, d = x.shape
    return x[:, :, None].expand(b, kv_heads, group, s, d).reshape(b, kv_heads * group, s, d)


# ---------------------------------------------------------------------------------------------


class StaticDecoderEngine:
    """Greedy decoding with a preallocated KV cache; the decode step optionally compiled and
    captured as one graph (see the module docstring).

    ``max_len`` is the cache capacity in tokens (prompt + generated − 1 are needed). The buffers
    are allocated for (batch, capacity) at the first :meth:`prepare` or :meth:`prefill` and kept:
    later generations with the same batch and a prompt that fits reuse them and the captured
    graph; a new batch or a longer need reallocates and re-captures once. Capture happens in
    :meth:`prepare` (call it before timing) or else lazily at the first :meth:`step`.
    """

    def __init__(self, model, device, max_len: int, graph_capture: bool = False, compile: bool = False,
                 compile_scope: str = "layer", compile_mode: str | None = None, warmup_steps: int = 3,
                 compile_backend="inductor") -> None:
        import torch

        if max_len < 2:
            raise ValueError(f"max_len={max_len}: the cache needs room for a prompt and a generated token")
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(f"compile_scope={compile_scope!r}: valid values are {', '.join(COMPILE_SCOPES)}")
        self.kind, self.torch_device = _kind_and_device(device)
        self.model = model
        self.max_len = int(max_len)
        self.compile = bool(compile)
        self.compile_scope = compile_scope
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend  # "inductor", or a backend object (torchair's on an NPU)
        self.warmup_steps = max(1, int(warmup_steps))
        self.notes: list[str] = []
        self.traffic = None  # everything stays on the device; nothing is counted
        self.prefill_executions = 1  # the prompt in one pass
        self.graph_capture = bool(graph_capture)
        if self.graph_capture and _graph_api(self.kind) is None:
            self._note(f"graph capture is not available on {self.kind} (no torch.{self.kind} graph API); "
                       "the static decode step runs eagerly")
            self.graph_capture = False
        self._read_model(model)
        self.dtype = self._embed.dtype
        self.allocations = 0  # buffer (re)allocations, for tests and logs
        self.captures = 0  # graph captures
        self._batch = 0
        self._capacity = 0
        self._graph = None
        self._warm = False
        self._prompt_len = 0
        self._next = 0  # host mirror of the device write slot (never read back from the device)
        self._count = 0
        self._step_fn = self._build_step(torch)

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log.warning("%s", text)

    # -- model ------------------------------------------------------------------------------

    def _read_model(self, model) -> None:
        try:
            spec = read_qwen2(model)
        except ValueError as exc:
            raise ToolchainError(f"the static decoder {exc}") from None
        base, layers = spec["base"], spec["layers"]
        self.num_layers = len(layers)
        self.heads, self.kv_heads, self.head_dim = spec["heads"], spec["kv_heads"], spec["head_dim"]
        self.scaling, self.eps = spec["scaling"], spec["eps"]
        self._embed = base.embed_tokens.weight
        self._inv_freq, self._rope_scaling = spec["inv_freq"], spec["rope_scaling"]
        self._norm, self._norm_eps = base.norm.weight, spec["norm_eps"]
        self._lm_weight = model.lm_head.weight  # the embedding itself when tied: no copy
        self._lm_bias = getattr(model.lm_head, "bias", None)
        # Compiled steps also fuse the projections (an extra copy of the q/k/v and gate/up weights).
        self._layers = [LayerWeights.of(layer, fuse=self.compile) for layer in layers]

    def _build_step(self, torch) -> Callable[[], None]:
        prologue, layer, epilogue = decode_prologue, decode_layer, decode_epilogue
        options = {"fullgraph": True, "dynamic": False, "mode": self.compile_mode, "backend": self.compile_backend}
        if self.compile:
            _allow_recompiles(torch)
        if self.compile and self.compile_scope == "layer":
            # One compiled layer serves every layer (weights are arguments): compile time is that
            # of one layer, not of the whole model.
            prologue, layer, epilogue = (torch.compile(f, **options) for f in (prologue, layer, epilogue))

        def step() -> None:
            h, cos, sin = prologue(self._token, self._pos, self._write, self._mask, self._embed, self._inv_freq,
                                   self._rope_scaling)
            for i, w in enumerate(self._layers):
                h = layer(h, cos, sin, self._mask, self._write, self._k[i], self._v[i], w, self.eps, self.heads,
                          self.kv_heads, self.head_dim, self.scaling)
            epilogue(h, self._norm, self._norm_eps, self._lm_weight, self._lm_bias, self._token, self._pos,
                     self._write, self._history)

        if self.compile and self.compile_scope == "step":
            return torch.compile(step, **options)
        return step

    # -- buffers ----------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def batch(self) -> int:
        return self._batch

    def _ensure(self, batch: int, needed: int) -> None:
        if batch == self._batch and needed <= self._capacity:
            return
        import torch

        capacity = -(-max(needed, self.max_len) // CAPACITY_ALIGN) * CAPACITY_ALIGN
        self._graph = None  # it points at the old buffers
        self._warm = False
        self._k = self._v = None
        dev, dt = self.torch_device, self.dtype
        shape = (batch, self.kv_heads, capacity, self.head_dim)
        self._k = [torch.zeros(shape, dtype=dt, device=dev) for _ in range(self.num_layers)]
        self._v = [torch.zeros(shape, dtype=dt, device=dev) for _ in range(self.num_layers)]
        self._token = torch.zeros(batch, dtype=torch.long, device=dev)
        self._pos = torch.zeros(batch, dtype=torch.long, device=dev)
        self._write = torch.zeros(1, dtype=torch.long, device=dev)
        self._mask = torch.full((batch, 1, 1, capacity), torch.finfo(dt).min, dtype=dt, device=dev)
        self._history = torch.zeros(batch, capacity + 1, dtype=torch.long, device=dev)
        self._batch, self._capacity = batch, capacity
        self.allocations += 1
        log.debug("static cache: batch %d, capacity %d, %d layers", batch, capacity, self.num_layers)

    def prepare(self, batch: int, prompt_len: int, new_tokens: int) -> None:
        """Allocate for this shape and do the one-off work (compile, capture) now, outside timing."""
        self._ensure(batch, prompt_len + max(new_tokens - 1, 0))
        self._warm_up()

    # -- Engine protocol -------------------------------------------------------------------

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        import torch
        import torch.nn.functional as F

        try:  # the positions of the kv_cache graph's engine (CacheEngine), from the same left-padding rule
            pads = gc.left_pad_lengths(attention_mask)
        except ValueError as exc:
            raise AscendLabError(f"generation: {exc}") from None
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(self.torch_device)
        mask = torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int64)).to(self.torch_device)
        batch, plen = ids.shape
        self._ensure(batch, plen)
        with torch.no_grad():
            positions = torch.from_numpy(gc.positions(0, plen, pads)).to(self.torch_device)
            h = F.embedding(ids, self._embed)
            cos, sin = rotary(positions, self._inv_freq, self._rope_scaling, h.dtype)
            additive = self._prompt_mask(mask, plen)
            group = self.heads // self.kv_heads
            for i, w in enumerate(self._layers):
                x = rms_norm(h, w.input_norm, self.eps)
                q, k, v = project(x, w, self.heads, self.kv_heads, self.head_dim, batch, plen)
                q, k = apply_rotary(q, cos, sin, self.head_dim), apply_rotary(k, cos, sin, self.head_dim)
                self._k[i][:, :, :plen].copy_(k)
                self._v[i][:, :, :plen].copy_(v)
                out = F.scaled_dot_product_attention(q, _repeat_kv(k, group), _repeat_kv(v, group),
                                                     attn_mask=additive, scale=self.scaling)
                h = h + F.linear(out.transpose(1, 2).reshape(batch, plen, -1), w.o_weight)
                h = mlp_block(h, w, self.eps)
            logits = F.linear(rms_norm(h[:, -1], self._norm, self._norm_eps), self._lm_weight, self._lm_bias)
            first = logits.argmax(dim=-1)
            # In place: a captured graph holds these very buffers.
            blocked = torch.finfo(self.dtype).min
            self._mask.fill_(blocked)
            self._mask[:, 0, 0, :plen].masked_fill_(mask != 0, 0.0)
            self._token.copy_(first)
            self._pos.copy_(mask.sum(-1))
            self._write.fill_(plen)
            self._history.zero_()
            self._history[:, plen].copy_(first)
        self._prompt_len = self._next = plen
        self._count = 1

    def _prompt_mask(self, mask, plen: int):
        """[b, 1, s, s] additive: causal and real keys; a padded query sees itself so that its
        (never used) row stays finite instead of NaN-poisoning the cache."""
        import torch

        index = torch.arange(plen, device=mask.device)
        causal = index[None, :] <= index[:, None]
        eye = index[None, :] == index[:, None]
        allowed = causal[None] & ((mask != 0)[:, None, :] | eye[None])
        additive = torch.zeros(allowed.shape, dtype=self.dtype, device=mask.device)
        return additive.masked_fill(~allowed, torch.finfo(self.dtype).min).unsqueeze(1)

    def step(self) -> None:
        import torch

        if self._count == 0:
            raise RuntimeError("step() before prefill()")
        if self._next >= self._capacity:
            raise ToolchainError(
                f"the static KV cache is full ({self._capacity} slots, prompt {self._prompt_len} + "
                f"{self._count - 1} steps); build the engine with a larger max_len or call "
                "prepare(batch, prompt_len, new_tokens) first")
        if self.graph_capture or self.compile:
            self._warm_up()
        if self._graph is not None:
            self._graph.replay()
        else:
            with torch.no_grad():
                self._step_fn()
        self._next += 1
        self._count += 1

    def generated(self) -> np.ndarray:
        start = self._prompt_len
        return self._history[:, start:start + self._count].cpu().numpy().astype(np.int64)

    # -- compile / capture ------------------------------------------------------------------

    def _warm_up(self) -> None:
        """Run the step a few times (compiles it), then capture it; the decode state is restored,
        so this may happen between prefill and the first step.

        The warm-up steps write the last cache slot, which is free whenever a step can still run
        (and a real step rewrites and unmasks a slot in the same step before reading it)."""
        if self._warm or not (self.graph_capture or self.compile):
            return
        import torch

        state = (self._token, self._pos, self._write, self._mask, self._history)
        saved = [t.clone() for t in state]
        api = _graph_api(self.kind) if self.graph_capture else None
        with torch.no_grad():
            if api is None:
                for _ in range(self.warmup_steps):
                    self._write.fill_(self._capacity - 1)
                    self._step_fn()
            else:
                self._graph = api.capture(self._step_fn, self.warmup_steps,
                                          lambda: self._write.fill_(self._capacity - 1))
                self.captures += 1
            for tensor, value in zip(state, saved):
                tensor.copy_(value)
        self._warm = True


class GraphApi:
    """torch.cuda / torch.npu graph capture: warm up on a side stream, capture, replay."""

    def __init__(self, backend, graph_cls) -> None:
        self.backend, self.graph_cls = backend, graph_cls

    def capture(self, fn: Callable[[], None], warmup_steps: int, reset: Callable[[], None]):
        b = self.backend
        stream = b.Stream()
        stream.wait_stream(b.current_stream())
        with b.stream(stream):
            for _ in range(warmup_steps):
                reset()
                fn()
        b.current_stream().wait_stream(stream)
        graph = self.graph_cls()
        reset()
        with b.graph(graph):
            fn()
        b.synchronize()
        return graph


def _graph_api(kind: str) -> GraphApi | None:
    import torch

    if kind == "cpu":
        return None
    backend = getattr(torch, kind, None)
    graph_cls = getattr(backend, f"{kind.upper()}Graph", None)
    if backend is None or graph_cls is None or not hasattr(backend, "graph"):
        return None
    return GraphApi(backend, graph_cls)


def _allow_recompiles(torch, at_least: int = 64) -> None:
    """Each (batch, capacity) is its own static specialisation; a sweep over many batch sizes must
    not hit Dynamo's default limit (8), past which it silently runs the step uncompiled."""
    import torch._dynamo

    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # new name, old name
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), at_least))


def _kind_and_device(device):
    """(kind, torch.device) from an ``ascend_lab.device.Device``, a torch.device or a string."""
    import torch

    if hasattr(device, "torch_device"):
        return device.kind, device.torch_device
    device = torch.device(device)
    return device.type, device

