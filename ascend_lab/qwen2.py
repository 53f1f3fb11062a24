"""Qwen2 decoder math as plain tensor functions, and the ``kv_cache`` graph as a torch module.

One copy of the math serves the exported generation graph (:class:`CacheGraphDecoder`, also what the
torch runtime runs) and the static-cache engine whose decode step is captured as a device graph
(:mod:`ascend_lab.runtimes.torch.static_decoder`). The operations and their order are those of transformers'
Qwen2 code (RMSNorm in float32, rotary from the model's own ``inv_freq`` in float32, softmax in
float32, SiLU MLP), so in float32 the greedy tokens are Hugging Face's.

The module imports only torch (no Hydra, MLflow or transformers), so standalone scripts can use it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ascend_lab.graph_contract import MASK_VALUE


class LayerWeights(NamedTuple):
    """One decoder layer's parameters: references to the Hugging Face modules' own tensors."""

    input_norm: Any
    q_weight: Any
    q_bias: Any
    k_weight: Any
    k_bias: Any
    v_weight: Any
    v_bias: Any
    o_weight: Any
    post_norm: Any
    gate: Any
    up: Any
    down: Any
    # Optional concatenations (q|k|v and gate|up): one matrix-vector product instead of three and two,
    # which reads the same bytes in fewer, larger kernels. A copy of those weights; None when unused.
    qkv_weight: Any = None
    qkv_bias: Any = None
    gate_up: Any = None

    @classmethod
    def of(cls, layer, fuse: bool = False) -> LayerWeights:
        a, m = layer.self_attn, layer.mlp
        weights = cls(layer.input_layernorm.weight, a.q_proj.weight, a.q_proj.bias, a.k_proj.weight,
                      a.k_proj.bias, a.v_proj.weight, a.v_proj.bias, a.o_proj.weight,
                      layer.post_attention_layernorm.weight, m.gate_proj.weight, m.up_proj.weight,
                      m.down_proj.weight)
        if not fuse:
            return weights
        with torch.no_grad():
            biases = (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
            return weights._replace(
                qkv_weight=torch.cat([weights.q_weight, weights.k_weight, weights.v_weight]),
                qkv_bias=None if any(b is None for b in biases) else torch.cat(biases),
                gate_up=torch.cat([weights.gate, weights.up]))


def rms_norm(x, weight, eps: float):
    dtype = x.dtype
    x32 = x.to(torch.float32)
    variance = x32.pow(2).mean(-1, keepdim=True)
    x32 = x32 * torch.rsqrt(variance + eps)
    return weight * x32.to(dtype)


def rotate_half(x, head_dim: int):
    # head_dim is the config's int, not x.shape[-1]: an export then slices at constant offsets instead of
    # computing them from a Shape node in every layer.
    half = head_dim // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(positions, inv_freq, attention_scaling: float, dtype):
    """cos, sin [batch, 1, seq, head_dim] for integer positions [batch, seq] (transformers' formula)."""
    freqs = positions[..., None].float() * inv_freq.to(torch.float32)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * attention_scaling).to(dtype)
    sin = (emb.sin() * attention_scaling).to(dtype)
    return cos.unsqueeze(1), sin.unsqueeze(1)


def mlp_block(h, w: LayerWeights, eps: float):
    """The residual MLP half of a layer: h + down(silu(gate(x)) * up(x)), x = post-attention norm of h."""
    x = rms_norm(h, w.post_norm, eps)
    if w.gate_up is not None:
        gate, up = F.linear(x, w.gate_up).chunk(2, dim=-1)
        return h + F.linear(F.silu(gate) * up, w.down)
    return h + F.linear(F.silu(F.linear(x, w.gate)) * F.linear(x, w.up), w.down)


def project(x, w: LayerWeights, heads: int, kv_heads: int, head_dim: int, b, s):
    """q [b, heads, s, d], k and v [b, kv_heads, s, d] from normed hidden states [b, s, hidden].

    ``b`` and ``s`` are the caller's batch and sequence sizes, taken once from the graph's input rather than
    from ``x`` in every layer: in an export every layer's reshapes then share one shape computation
    (onnxruntime merges the identical nodes), not a Shape → Gather → Unsqueeze → Concat chain each."""
    if w.qkv_weight is not None:
        q, k, v = F.linear(x, w.qkv_weight, w.qkv_bias).split(
            [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    else:
        q, k, v = F.linear(x, w.q_weight, w.q_bias), F.linear(x, w.k_weight, w.k_bias), F.linear(x, w.v_weight, w.v_bias)
    return (q.reshape(b, s, heads, head_dim).transpose(1, 2), k.reshape(b, s, kv_heads, head_dim).transpose(1, 2),
            v.reshape(b, s, kv_heads, head_dim).transpose(1, 2))


def apply_rotary(x, cos, sin, head_dim: int):
    return (x * cos) + (rotate_half(x, head_dim) * sin)


def read_qwen2(model) -> dict:
    """The Qwen2 figures and tensors the decoders need; a clear error for anything else."""
    config = model.config
    try:
        base, layers = model.model, model.model.layers
        rotary_emb = base.rotary_emb
    except AttributeError as exc:
        raise ValueError(f"needs a Qwen2-architecture model (model.model.layers, rotary_emb); "
                         f"{type(model).__name__} has no {exc.name}") from exc
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"implements SiLU MLPs; hidden_act={config.hidden_act!r}")
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        raise ValueError("attends over the full cache; this config uses sliding-window layers "
                         "(use_sliding_window=true)")
    rope_type = getattr(rotary_emb, "rope_type", "default")
    if any(kind in rope_type for kind in ("dynamic", "longrope")):
        raise ValueError(f"rope_type={rope_type!r} changes its frequencies with the length; a fixed rotary "
                         "table is needed")
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attn0 = layers[0].self_attn
    return {
        "base": base, "layers": layers, "heads": heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or heads, "head_dim": head_dim,
        "scaling": float(getattr(attn0, "scaling", head_dim ** -0.5)),
        "eps": float(layers[0].input_layernorm.variance_epsilon),
        "norm_eps": float(base.norm.variance_epsilon),
        "inv_freq": rotary_emb.inv_freq, "rope_scaling": float(getattr(rotary_emb, "attention_scaling", 1.0)),
    }


class CacheGraphDecoder(nn.Module):
    """The ``kv_cache`` graph (see :mod:`ascend_lab.graph_contract`) over a Qwen2 model's own weights.

    ``forward(input_ids, position_ids, past_length, pad_lengths, past_key_values)`` →
    ``(logits [b, vocab], next_token [b], present_key_values [s, b, 2·layers, kv_heads, dim])``.

    Written for ATC's ONNX operator pages: index arithmetic in int32 (Less/Sub/Mul take no int64 there),
    no Cast to int64, no negative Gather indices, float32 only where transformers computes in float32 and
    every MatMul in the model dtype; masked scores are replaced (``Where``), never added to, so nothing
    overflows in float16. Attention runs over the cache and the new tokens as two score blocks joined
    before the softmax, so the cache is never concatenated with the new keys.

    ``layer_outputs=True`` is the graph's debug variant: a fourth output, ``layer_hidden_states``
    [layers, b, hidden], each layer's residual stream at the last position (what ``task=accuracy``
    compares layer by layer to find where a drift starts). It only reads values the plain graph computes
    anyway, so logits and tokens are the plain graph's.

    ``fuse_projections=True`` computes q|k|v and gate|up each as one MatMul over concatenated weights
    (registered as persistent buffers, so an export holds the fused matrices as initializers, not the
    separate ones nor Constant nodes): at batch 1 a decode step is a chain of matrix-vector products, and fewer, larger ones spend
    less time between kernels. It holds a copy of those weights, so the torch runtime leaves it off.
    """

    def __init__(self, model: nn.Module, layer_outputs: bool = False, fuse_projections: bool = False,
                 cache_layout: str = "rank5") -> None:
        super().__init__()
        self.model = model
        self.cache_layout = cache_layout  # rank4: the cache is [capacity, b, 2·layers, kv_heads·dim] in and out
        self.spec = read_qwen2(model)
        self.num_layers = len(self.spec["layers"])
        self.layer_outputs = layer_outputs
        self.fused_names: list[dict[str, str]] = []
        for i, layer in enumerate(self.spec["layers"] if fuse_projections else ()):
            fused = LayerWeights.of(layer, fuse=True)
            names = {}
            for field in ("qkv_weight", "qkv_bias", "gate_up"):
                if getattr(fused, field) is not None:
                    names[field] = f"layer{i}_{field}"
                    self.register_buffer(names[field], getattr(fused, field))
            self.fused_names.append(names)

    def layer_weights(self, i: int, layer) -> LayerWeights:
        """Layer ``i``'s weights; the fused ones read from the buffers (``.to()`` replaces buffer tensors)."""
        w = LayerWeights.of(layer)
        if not self.fused_names:
            return w
        return w._replace(**{field: getattr(self, name) for field, name in self.fused_names[i].items()})

    def forward(self, input_ids, position_ids, past_length, pad_lengths, past_key_values):
        spec = self.spec
        heads, kv_heads, dim = spec["heads"], spec["kv_heads"], spec["head_dim"]
        group = heads // kv_heads
        # Sizes read once from the inputs and reused by every layer (see project()).
        batch, seq, capacity = input_ids.shape[0], input_ids.shape[1], past_key_values.shape[0]
        base = spec["base"]
        if self.cache_layout == "rank4":
            past_key_values = past_key_values.reshape(capacity, batch, 2 * len(spec["layers"]), kv_heads, dim)

        h = F.embedding(input_ids, base.embed_tokens.weight)
        cos, sin = rotary(position_ids, spec["inv_freq"], spec["rope_scaling"], h.dtype)
        allowed_past, allowed_new = _allowed(past_length, pad_lengths, capacity, seq)
        blocked = torch.tensor(MASK_VALUE, dtype=h.dtype)
        presents, layer_last = [], []
        for i, layer in enumerate(spec["layers"]):
            w = self.layer_weights(i, layer)
            x = rms_norm(h, w.input_norm, spec["eps"])
            q, k, v = project(x, w, heads, kv_heads, dim, batch, seq)
            q, k = apply_rotary(q, cos, sin, dim), apply_rotary(k, cos, sin, dim)
            presents += [k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3)]  # [s, b, kv_heads, dim]
            # GQA without copying the cache: the `group` query heads of a KV head are its rows.
            q = q.reshape(batch, kv_heads, -1, dim)  # [b, kv_heads, group·seq, dim]
            past_k = past_key_values[:, :, 2 * i].permute(1, 2, 3, 0)  # [b, kv_heads, dim, capacity]
            past_v = past_key_values[:, :, 2 * i + 1].permute(1, 2, 0, 3)  # [b, kv_heads, capacity, dim]
            scores_past = torch.matmul(q, past_k) * spec["scaling"]
            scores_new = torch.matmul(q, k.transpose(2, 3)) * spec["scaling"]
            scores_past = torch.where(allowed_past, scores_past.reshape(batch, kv_heads, group, seq, capacity),
                                      blocked)
            scores_new = torch.where(allowed_new, scores_new.reshape(batch, kv_heads, group, seq, seq), blocked)
            scores = torch.cat([scores_past, scores_new], dim=-1)
            # Cast, then softmax: softmax(dtype=float32) exports as Softmax → Cast, i.e. a float16 softmax.
            probs = F.softmax(scores.to(torch.float32), dim=-1).to(h.dtype)
            probs = probs.reshape(batch, kv_heads, -1, capacity + seq)
            out = torch.matmul(probs[..., :capacity], past_v) + torch.matmul(probs[..., capacity:], v)
            out = out.reshape(batch, heads, seq, dim).transpose(1, 2).reshape(batch, seq, heads * dim)
            h = h + F.linear(out, w.o_weight)
            h = mlp_block(h, w, spec["eps"])
            if self.layer_outputs:
                layer_last.append(h[:, -1:, :])  # a Slice, as for `last` below (no negative Gather index)
        last = rms_norm(h[:, -1:, :], base.norm.weight, spec["norm_eps"])
        lm_head = self.model.lm_head
        logits = F.linear(last, lm_head.weight, getattr(lm_head, "bias", None)).reshape(batch, -1)
        next_token = torch.argmax(logits, dim=-1)
        present = torch.stack(presents, dim=2)  # [s, b, 2·layers, kv_heads, dim]
        if self.cache_layout == "rank4":
            present = present.reshape(seq, batch, 2 * len(spec["layers"]), kv_heads * dim)
        if self.layer_outputs:  # [b, layers, hidden] → [layers, b, hidden]
            return logits, next_token, present, torch.cat(layer_last, dim=1).transpose(0, 1)
        return logits, next_token, present


def _allowed(past_length, pad_lengths, capacity, seq):
    """Which keys each new token may see, as ([b, 1, 1, 1, capacity], [b, 1, 1, seq, seq]) bool masks:
    a row's written cache slots (its pads excluded), and the new tokens causally (pads excluded)."""
    written = past_length.to(torch.int32)
    pads = pad_lengths.to(torch.int32).reshape(-1, 1)
    slots = torch.arange(capacity, dtype=torch.int32).reshape(1, -1)
    allowed_past = (slots >= pads) & (slots < written)  # [b, capacity]
    new = torch.arange(seq, dtype=torch.int32)
    causal = new.reshape(1, -1) < (new.reshape(-1, 1) + 1)  # [seq (query), seq (key)]
    real_new = (new.reshape(1, -1) + written) >= pads  # [b, seq (key)]
    allowed_new = causal.reshape(1, seq, seq) & real_new.reshape(-1, 1, seq)
    batch = allowed_past.shape[0]
    return allowed_past.reshape(batch, 1, 1, 1, capacity), allowed_new.reshape(batch, 1, 1, seq, seq)
