"""Torch modules whose forward signatures are the exported graphs (see the I/O convention).

- :class:`HiddenStatesWrapper` is the walkthrough's ``QwenWrapper``: the base model's
  ``last_hidden_state``, no cache.
- :class:`LogitsWrapper`: LM logits, no cache.
- :class:`KVCacheDecoder`: logits plus present keys/values from flat past keys/values; the same
  graph serves prefill (past length 0) and decode (one token per step).

The logits and KV-cache wrappers derive position ids as ``cumsum(mask) - 1`` (so left padding
works) and, for Qwen2-class models, build the additive 4-D attention mask themselves from
comparisons of index ranges: no ``tril``/``Trilu`` (which ATC rejects) and no data-dependent
Python branch for the tracer to freeze.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ascend_lab.errors import AscendLabError

# Model types whose decoder accepts a prepared 4-D mask (dict form) and a Cache object.
KV_CACHE_MODEL_TYPES = ("qwen2",)


def io_names(graph: str, num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of an exported graph, in argument order."""
    if graph == "hidden_states":
        return ["input_ids", "attention_mask"], ["hidden_states"]
    if graph == "logits":
        return ["input_ids", "attention_mask"], ["logits"]
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", *past], ["logits", *present]


def dynamic_axes(graph: str, num_layers: int) -> dict[str, dict[int, str]]:
    """Named dynamic axes of every input and output (batch, seq, past_seq, total_seq)."""
    inputs, outputs = io_names(graph, num_layers)
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "seq"}}
    axes["attention_mask"] = {0: "batch", 1: "total_seq" if graph == "kv_cache" else "seq"}
    for name in inputs[2:]:
        axes[name] = {0: "batch", 2: "past_seq"}
    for name in outputs:
        if name.startswith("present."):
            axes[name] = {0: "batch", 2: "total_seq"}
        else:
            axes[name] = {0: "batch", 1: "seq"}
    return axes


def position_ids_from_mask(attention_mask: torch.Tensor, seq_len_like: torch.Tensor) -> torch.Tensor:
    """Positions of the last ``seq`` tokens: cumsum(mask) - 1 over the whole (past + new) mask."""
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 1)
    seq = seq_len_like.shape[1]
    return positions[:, positions.shape[1] - seq:]


def additive_causal_mask(attention_mask: torch.Tensor, seq_len_like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 1, seq, total] additive mask: 0 where key j is real and j <= the query's position."""
    ones_total = torch.ones_like(attention_mask[0], dtype=torch.long)
    ones_seq = torch.ones_like(seq_len_like[0], dtype=torch.long)
    key_index = ones_total.cumsum(0) - 1  # 0 .. total-1
    past_len = ones_total.sum() - ones_seq.sum()
    query_index = ones_seq.cumsum(0) - 1 + past_len  # past .. total-1
    causal = key_index.unsqueeze(0) <= query_index.unsqueeze(1)  # [seq, total]
    allowed = causal.unsqueeze(0).unsqueeze(0) & (attention_mask != 0).unsqueeze(1).unsqueeze(2)
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)


def _cache_kwarg(module: nn.Module) -> str:
    """transformers 5.x calls the cache argument ``cache``; 4.x ``past_key_values``."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "")


def _prepared_mask(model: nn.Module, attention_mask: torch.Tensor, input_ids: torch.Tensor):
    """The mask argument for the decoder: our 4-D mask where supported, else the 2-D one."""
    if _model_type(model) in KV_CACHE_MODEL_TYPES:
        return {"full_attention": additive_causal_mask(attention_mask, input_ids, model.dtype)}
    return attention_mask


class HiddenStatesWrapper(nn.Module):
    """The walkthrough's wrapper: the base model's last hidden state, cache disabled."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                        use_cache=False, return_dict=True)
        return outputs.last_hidden_state


class LogitsWrapper(nn.Module):
    """LM logits for every position, no cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs = self.model(input_ids=input_ids,
                             attention_mask=_prepared_mask(self.model, attention_mask, input_ids),
                             position_ids=position_ids_from_mask(attention_mask, input_ids),
                             use_cache=False, return_dict=True)
        return outputs.logits


class KVCacheDecoder(nn.Module):
    """``(input_ids, attention_mask, past.0.key, past.0.value, ...) → (logits, present.0.key, ...)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model_type = _model_type(model)
        if model_type not in KV_CACHE_MODEL_TYPES:
            raise AscendLabError(
                f"export.graph=kv_cache supports Qwen2-class models (model_type {', '.join(KV_CACHE_MODEL_TYPES)}), "
                f"not model_type={model_type!r} (e.g. the original Qwen's remote code). Use export.graph=logits "
                "or hidden_states for it, or a Qwen1.5/Qwen2.5 checkpoint.")
        self.model = model
        self.num_layers = model.config.num_hidden_layers
        self._cache_kwarg = _cache_kwarg(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *past_key_values: torch.Tensor):
        from transformers import DynamicCache

        if len(past_key_values) != 2 * self.num_layers:
            raise ValueError(f"expected {2 * self.num_layers} past tensors, got {len(past_key_values)}")
        cache = DynamicCache()
        for i in range(self.num_layers):
            cache.update(past_key_values[2 * i], past_key_values[2 * i + 1], i)
        outputs = self.model(input_ids=input_ids,
                             attention_mask=_prepared_mask(self.model, attention_mask, input_ids),
                             position_ids=position_ids_from_mask(attention_mask, input_ids),
                             use_cache=True, return_dict=True, **{self._cache_kwarg: cache})
        present = []
        for i in range(self.num_layers):
            key, value = layer_kv(cache, i)
            present += [key, value]
        return (outputs.logits, *present)


def layer_kv(cache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of one layer of a DynamicCache (5.x ``layers``, 4.x ``key_cache`` lists)."""
    if hasattr(cache, "layers"):
        layer = cache.layers[layer_idx]
        return layer.keys, layer.values
    return cache.key_cache[layer_idx], cache.value_cache[layer_idx]


def empty_past(config, batch: int, dtype: torch.dtype, past_len: int = 0, generator=None) -> list[torch.Tensor]:
    """Flat past tensors for a model config: empty (prefill) or random of ``past_len`` positions."""
    heads = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (batch, heads, past_len, head_dim)
    return [torch.randn(shape, generator=generator).to(dtype) for _ in range(2 * config.num_hidden_layers)]


def wrapper_for(graph: str, model: nn.Module) -> nn.Module:
    return {"hidden_states": HiddenStatesWrapper, "logits": LogitsWrapper, "kv_cache": KVCacheDecoder}[graph](model)
