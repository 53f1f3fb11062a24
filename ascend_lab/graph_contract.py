"""The graph contract: what an exported graph takes and gives, shared by export, every runtime and the
benchmark (none of them reaches sideways or up for it).

Three graphs (``export.graph``):

- ``hidden_states`` (the walkthrough's wrapper): ``input_ids``, ``attention_mask`` [batch, seq] →
  ``hidden_states`` [batch, seq, hidden]. No cache.
- ``logits``: the same inputs → ``logits`` [batch, seq, vocab]. No cache: generation re-reads the whole
  sequence every token.
- ``kv_cache``, the generation graph, shaped for ATC (static shapes but one gear dim, positions passed in,
  one cache tensor of fixed capacity, only ops and dtypes ATC's ONNX pages list) and run the same way by
  torch, onnxruntime and pyACL:

  ============================ ============================================ ==========================
  name                         shape                                        meaning
  ============================ ============================================ ==========================
  in ``input_ids``             [batch, seq] int64                           the new tokens
  in ``position_ids``          [batch, seq] int64                           their rotary positions
  in ``past_length``           [1] int64                                    slots written before them
  in ``pad_lengths``           [batch] int64                                each row's leading pad slots
  in ``past_key_values``       [capacity, batch, 2·layers, kv_heads, dim]   the cache (keys, values)
  out ``logits``               [batch, vocab]                               last position only
  out ``next_token``           [batch] int64                                its greedy pick (ArgMax)
  out ``present_key_values``   [seq, batch, 2·layers, kv_heads, dim]        the new tokens' K/V
  out ``layer_hidden_states``  [layers, batch, hidden]                      debug variant only (below)
  ============================ ============================================ ==========================

  The new tokens occupy cache slots ``[past_length, past_length + seq)``; the graph attends over the
  cache's written slots of each row (``pad_lengths[b] <= slot < past_length``) and causally over the new
  tokens, and the caller writes ``present_key_values`` into exactly those slots afterwards. The cache is
  *slot-major*: one slot of the whole batch (all layers, keys and values) is one contiguous block, so
  that write is one device-to-device copy per execution whatever the batch and depth, and the traffic
  between host and device per token is a few integers in and one token id out, independent of the
  context. Masked scores are replaced by :data:`MASK_VALUE`, finite in float16, so no row turns NaN.
  ``seq`` is the only dynamic dim ATC needs (gears ``1`` for a decode step and ``export.prefill_chunks``
  for the prompt): two ``-1`` per gear. ``capacity`` is symbolic in the ONNX file and fixed by ATC.

  The *debug variant* (``layer_outputs``, ``export.layer_outputs``) is the same graph with one more output:
  each decoder layer's hidden state (the residual stream after the layer) at the last position, so that
  ``task=accuracy`` can say which layer a drift starts in. It computes exactly what the plain graph
  computes, through the same ops, and is exported, op-checked and compiled the same way (its own cache
  entry); nothing but the accuracy task's layer report asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GENERATIVE_GRAPHS = ("logits", "kv_cache")

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
PAST_LENGTH = "past_length"
PAD_LENGTHS = "pad_lengths"
PAST_KEY_VALUES = "past_key_values"
HIDDEN_STATES = "hidden_states"
LOGITS = "logits"
NEXT_TOKEN = "next_token"
PRESENT_KEY_VALUES = "present_key_values"
LAYER_HIDDEN_STATES = "layer_hidden_states"
# The per-layer cache of onnxruntime's derived graph (ascend_lab.export.fused_attention), never what ATC compiles:
# one input per layer's keys (even j = 2·layer) and values (odd j), each [batch, kv_heads, capacity, dim], in place
# of past_key_values, and an output of each name below bound to the same memory (the graph writes the new slots);
# no present_key_values. The graph's metadata MAX_CACHE_SLOTS_KEY holds the most slots its cache may have.
PAST_LAYER_INPUT = PAST_KEY_VALUES + ".{}"
PRESENT_LAYER_OUTPUT = PRESENT_KEY_VALUES + ".{}"
MAX_CACHE_SLOTS_KEY = "ascend_lab.max_cache_slots"
# That graph's other inputs in place of past_length and pad_lengths: what its GroupQueryAttention ops read, made by
# the runtime (fused_attention_feeds) rather than by a chain of small ops every step.
SEQLENS_K = "seqlens_k"
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"
QUERY_SEQLENS = "query_seqlens"
ATTENTION_BIAS = "attention_bias"

# Replaces masked attention scores: finite in float16 (whose largest magnitude is 65504) and far below
# any real score, so exp() of it underflows to exactly 0 in float16 and float32 alike. ATC's default
# force_fp16 would turn a finfo(float32).min mask into -inf and a fully masked (padding) row into NaN.
MASK_VALUE = -1.0e4

# numpy has no bfloat16: such tensors travel as float32 through numpy feeds.
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}


@dataclass(frozen=True)
class ModelDims:
    """The figures of a decoder that shape its graphs."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int

    @classmethod
    def of(cls, config) -> ModelDims:
        """From a transformers config (Qwen2Config or a checkpoint's own)."""
        heads = config.num_attention_heads
        return cls(num_layers=config.num_hidden_layers, num_heads=heads,
                   num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                   hidden_size=config.hidden_size, vocab_size=config.vocab_size)


@dataclass(frozen=True)
class GraphContract:
    """One graph's I/O: names, dims and dtypes (``dtype``: the float dtype it computes in).

    ``layer_outputs``: the kv_cache graph's debug variant, which also outputs every decoder layer's hidden
    state at the last position (:data:`LAYER_HIDDEN_STATES`).
    """

    graph: str
    dims: ModelDims
    dtype: str
    layer_outputs: bool = False
    cache_layout: str = "rank5"  # or rank4: kv_heads·head_dim as one dim (ascend_lab.export.cache_layout)

    def __post_init__(self) -> None:
        if self.layer_outputs and self.graph != "kv_cache":
            raise ValueError(f"layer outputs are a variant of the kv_cache graph, not of {self.graph!r}")

    @property
    def generative(self) -> bool:
        return self.graph in GENERATIVE_GRAPHS

    @property
    def numpy_dtype(self) -> type:
        return NUMPY_DTYPES[self.dtype]

    def input_names(self) -> list[str]:
        if self.graph == "kv_cache":
            return [INPUT_IDS, POSITION_IDS, PAST_LENGTH, PAD_LENGTHS, PAST_KEY_VALUES]
        return [INPUT_IDS, ATTENTION_MASK]

    def output_names(self) -> list[str]:
        names = {"hidden_states": [HIDDEN_STATES], "logits": [LOGITS],
                 "kv_cache": [LOGITS, NEXT_TOKEN, PRESENT_KEY_VALUES]}[self.graph]
        return names + [LAYER_HIDDEN_STATES] if self.layer_outputs else names

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Named symbolic dims of every input and output (what ATC's shapes are derived from)."""
        if self.graph != "kv_cache":
            axes = {INPUT_IDS: {0: "batch", 1: "seq"}, ATTENTION_MASK: {0: "batch", 1: "seq"}}
            axes[self.output_names()[0]] = {0: "batch", 1: "seq"}
            return axes
        axes = {
            INPUT_IDS: {0: "batch", 1: "seq"}, POSITION_IDS: {0: "batch", 1: "seq"},
            PAD_LENGTHS: {0: "batch"}, PAST_KEY_VALUES: {0: "capacity", 1: "batch"},
            LOGITS: {0: "batch"}, NEXT_TOKEN: {0: "batch"}, PRESENT_KEY_VALUES: {0: "seq", 1: "batch"},
        }
        if self.layer_outputs:
            axes[LAYER_HIDDEN_STATES] = {1: "batch"}
        return axes

    # -- the kv_cache graph's cache --------------------------------------------------------------

    def cache_shape(self, capacity: int, batch: int) -> tuple[int, ...]:
        d = self.dims
        if self.cache_layout == "rank4":
            return (capacity, batch, 2 * d.num_layers, d.num_kv_heads * d.head_dim)
        return (capacity, batch, 2 * d.num_layers, d.num_kv_heads, d.head_dim)

    def layer_hidden_shape(self, batch: int) -> tuple[int, int, int]:
        """The debug variant's :data:`LAYER_HIDDEN_STATES` output: [layers, batch, hidden]."""
        return (self.dims.num_layers, batch, self.dims.hidden_size)

    def slot_elements(self, batch: int) -> int:
        """Elements of one cache slot of the whole batch (one contiguous block of the cache)."""
        d = self.dims
        return batch * 2 * d.num_layers * d.num_kv_heads * d.head_dim

    def require_generative(self) -> None:
        if not self.generative:
            from ascend_lab.errors import ConfigError

            raise ConfigError("export.graph", self.graph,
                              "the hidden_states graph has no logits to pick tokens from; generation needs "
                              "export.graph=kv_cache (or logits)")


# ------------------------------------------------------------------------------------------------
# Host-side arithmetic of a generation over the kv_cache graph (pure: every runtime uses it alike)


@dataclass(frozen=True)
class PrefillPlan:
    """How a left-padded prompt batch is fed: ``extra_pad`` more pad slots in front (so the prompt fills
    whole chunks), then ``chunks`` executions of those sizes."""

    prompt_len: int
    extra_pad: int
    chunks: tuple[int, ...]

    @property
    def padded_len(self) -> int:
        return self.prompt_len + self.extra_pad


@dataclass(frozen=True)
class GraphFile:
    """A prepared graph a runtime loads (its artifact): an exported ``.onnx`` or a compiled ``.om``, and the
    contract its inputs and outputs keep."""

    path: Path
    contract: GraphContract


def has_layer_cache(input_names) -> bool:
    """Whether a graph with these inputs takes the cache per layer (:data:`PAST_LAYER_INPUT`)."""
    return PAST_LAYER_INPUT.format(0) in input_names


# The prefill cost model: one execution reads every weight once, which is what a prompt chunk costs on an
# accelerator (a chunk of up to a few hundred tokens stays bound by reading the weights), plus the compute
# of the slots it covers, pads included. EXECUTION_SLOTS is that read expressed in slots: an extra
# execution is worth this many padded slots.
EXECUTION_SLOTS = 256


def prefill_cost(chunks: tuple[int, ...] | list[int]) -> float:
    """A plan's cost in executions (see :data:`EXECUTION_SLOTS`)."""
    return len(chunks) + sum(chunks) / EXECUTION_SLOTS


def plan_prefill(prompt_len: int, chunk_sizes: list[int] | tuple[int, ...] | None, max_padded: int | None = None
                 ) -> PrefillPlan:
    """The cheapest way to feed a prompt through the chunk sizes (the compiled gears): left-pad it to a
    length the chunks sum to, largest chunks first, choosing the padded length by :func:`prefill_cost`.

    With chunks (16, 128): 496 tokens are padded to 512 and fed as 4 × 128 (not 3 × 128 + 7 × 16), 17 tokens
    as 1 × 128, 129 as 128 + 16. ``max_padded`` bounds the padded length (the cache slots left for the
    prompt); the least padding is taken when no cheaper plan fits.

    ``chunk_sizes=None``: a graph that takes any length (onnxruntime, torch) runs the whole prompt in one
    execution, unpadded (on a CPU every execution streams every weight, so chunking only multiplies that).
    """
    if prompt_len < 1:
        raise ValueError("a prompt needs at least one token")
    if chunk_sizes is None:
        return PrefillPlan(prompt_len, 0, (prompt_len,))
    sizes = sorted(set(chunk_sizes), reverse=True)
    limit = prompt_len + sizes[0]  # padding past one more largest chunk never lowers the cost
    fewest: list[tuple[int, ...] | None] = [()] + [None] * limit  # fewest chunks summing to each length
    for length in range(1, limit + 1):
        options = [fewest[length - size] + (size,) for size in sizes
                   if size <= length and fewest[length - size] is not None]
        fewest[length] = min(options, key=len, default=None)
    candidates = [(prefill_cost(chunks), length, chunks) for length, chunks in enumerate(fewest)
                  if length >= prompt_len and chunks is not None]
    fitting = [c for c in candidates if max_padded is None or c[1] <= max_padded]
    _, padded, chunks = min(fitting) if fitting else min(candidates, key=lambda c: c[1])
    return PrefillPlan(prompt_len, padded - prompt_len, tuple(sorted(chunks, reverse=True)))


def left_pad_lengths(attention_mask: np.ndarray) -> np.ndarray:
    """Leading zeros of each row of a left-padded [batch, seq] mask (int64 [batch]).

    Raises ValueError for a row with a hole or right padding: the cache graph masks a row's pads by
    their count, so they must all lead.
    """
    mask = np.asarray(attention_mask) != 0
    pads = np.argmax(mask, axis=1)
    pads[~mask.any(axis=1)] = mask.shape[1]
    real = mask.sum(axis=1)
    if np.any(pads + real != mask.shape[1]) or np.any(real == 0):
        raise ValueError("the kv_cache graph needs left-padded prompts (each row: zeros, then ones, at least one "
                         "real token)")
    return pads.astype(np.int64)


def positions(start_slot: int, length: int, pad_lengths: np.ndarray) -> np.ndarray:
    """Rotary positions [batch, length] of the tokens in slots ``start_slot…``: slot − the row's pads,
    0 for pad slots (their outputs are never read)."""
    slots = np.arange(start_slot, start_slot + length, dtype=np.int64)[None, :]
    return np.maximum(slots - pad_lengths[:, None], 0)


def fused_attention_feeds(past_length: int, seq: int, pad_lengths: np.ndarray, dtype) -> dict[str, np.ndarray]:
    """The fused graph's attention inputs for ``seq`` tokens written from slot ``past_length``, in the contract's
    terms: every row's new tokens count (``query_seqlens``), the keys span slots [0, past_length + seq), and a row's
    pad slots get :data:`MASK_VALUE` (``attention_bias`` [batch, 1, seq, total]; the op masks causally itself)."""
    total = past_length + seq
    batch = pad_lengths.shape[0]
    pad_bias = np.where(np.arange(total) < pad_lengths[:, None], MASK_VALUE, 0).astype(dtype)
    return {SEQLENS_K: np.full(batch, total - 1, dtype=np.int32),
            TOTAL_SEQUENCE_LENGTH: np.array(total, dtype=np.int32),
            QUERY_SEQLENS: np.full(batch, seq, dtype=np.int32),
            ATTENTION_BIAS: np.ascontiguousarray(np.broadcast_to(pad_bias[:, None, None, :], (batch, 1, seq, total)))}
