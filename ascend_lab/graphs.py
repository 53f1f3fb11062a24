"""Torch modules whose forward signatures are the exported graphs (see :mod:`ascend_lab.graph_contract`).

- :class:`HiddenStatesWrapper` is the walkthrough's ``QwenWrapper``: the base model's
  ``last_hidden_state``, no cache.
- :class:`LogitsWrapper`: LM logits, no cache.
- ``kv_cache``: :class:`ascend_lab.qwen2.CacheGraphDecoder`, the generation graph.

The logits wrapper derives position ids as ``cumsum(mask) - 1`` (so left padding works) and, for
Qwen2-class models, builds the 4-D attention mask itself from comparisons of index ranges: no
``tril``/``Trilu``, no data-dependent Python branch for the tracer to freeze, index arithmetic in int32
(ATC's CumSum takes no int64) and masked positions at the float16-safe
:data:`~ascend_lab.graph_contract.MASK_VALUE`.
"""

from __future__ import annotations

import torch
from torch import nn

from ascend_lab.errors import AscendLabError
from ascend_lab.graph_contract import MASK_VALUE

# Model types whose decoder accepts a prepared 4-D mask (dict form) and whose math ascend_lab.qwen2 has.
KV_CACHE_MODEL_TYPES = ("qwen2",)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions [batch, seq] of a left-padded mask: cumsum(mask) - 1, pads at 0 (int32)."""
    mask = attention_mask.to(torch.int32)
    positions = mask.cumsum(-1) - 1
    return positions * mask


def additive_causal_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, seq, seq] additive mask: 0 where key j is real and j <= the query's position."""
    index = torch.ones_like(attention_mask[0], dtype=torch.int32).cumsum(0)  # 1 .. seq
    causal = index.unsqueeze(0) < (index.unsqueeze(1) + 1)  # [seq (query), seq (key)]
    allowed = causal.unsqueeze(0).unsqueeze(0) & attention_mask.to(torch.bool).unsqueeze(1).unsqueeze(2)
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return blocked.masked_fill(~allowed, MASK_VALUE)


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "")


def _prepared_mask(model: nn.Module, attention_mask: torch.Tensor):
    """The mask argument for the decoder: our 4-D mask where supported, else the 2-D one."""
    if _model_type(model) in KV_CACHE_MODEL_TYPES:
        return {"full_attention": additive_causal_mask(attention_mask, model.dtype)}
    return attention_mask


class HiddenStatesWrapper(nn.Module):
    """The walkthrough's wrapper: the base model's last hidden state, cache disabled. For Qwen2-class
    models the mask and positions are built here as in :class:`LogitsWrapper` (transformers' own mask
    code traces to a bool ``Flatten`` ATC's pages refuse)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        own_mask = _model_type(self.model) in KV_CACHE_MODEL_TYPES
        outputs = self.model.base_model(
            input_ids=input_ids, attention_mask=_prepared_mask(self.model, attention_mask),
            position_ids=position_ids_from_mask(attention_mask) if own_mask else None,
            use_cache=False, return_dict=True)
        return outputs.last_hidden_state


class LogitsWrapper(nn.Module):
    """LM logits for every position, no cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids, attention_mask=_prepared_mask(self.model, attention_mask),
                             position_ids=position_ids_from_mask(attention_mask), use_cache=False, return_dict=True)
        return outputs.logits


def cache_graph_decoder(model: nn.Module, layer_outputs: bool = False, fuse_projections: bool = False,
                        cache_layout: str = "rank5") -> nn.Module:
    """The kv_cache graph module (``layer_outputs``: its debug variant; ``fuse_projections``: q|k|v and
    gate|up as one MatMul each; see :class:`ascend_lab.qwen2.CacheGraphDecoder`), or a clear error for
    models the graph does not cover."""
    from ascend_lab.qwen2 import CacheGraphDecoder

    model_type = _model_type(model)
    if model_type not in KV_CACHE_MODEL_TYPES:
        raise AscendLabError(
            f"export.graph=kv_cache supports Qwen2-class models (model_type {', '.join(KV_CACHE_MODEL_TYPES)}), "
            f"not model_type={model_type!r} (e.g. the original Qwen's remote code). Use export.graph=logits "
            "or hidden_states for it, or a Qwen1.5/Qwen2.5 checkpoint.")
    try:
        return CacheGraphDecoder(model, layer_outputs=layer_outputs, fuse_projections=fuse_projections,
                                 cache_layout=cache_layout)
    except ValueError as exc:
        raise AscendLabError(f"export.graph=kv_cache: the model {exc}") from None


def wrapper_for(graph: str, model: nn.Module, layer_outputs: bool = False,
                fuse_projections: bool = False, cache_layout: str = "rank5") -> nn.Module:
    """The module whose forward is ``graph``; ``layer_outputs`` and ``fuse_projections`` (kv_cache only)
    select its debug variant and its fused-weight layout."""
    if graph == "kv_cache":
        return cache_graph_decoder(model, layer_outputs, fuse_projections, cache_layout)
    return {"hidden_states": HiddenStatesWrapper, "logits": LogitsWrapper}[graph](model)
