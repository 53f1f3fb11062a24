"""`model` group: which Qwen model, where its weights come from, its dtype.

Presets in conf/model/ carry the architecture figures of real checkpoints, so
``model.weights=random`` builds the real shapes offline (same compute and memory cost as the
real model, for performance work without a download).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ascend_lab.errors import require, require_choice, require_positive

WEIGHT_SOURCES = ("random", "pretrained")
MODEL_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class ModelConfig:
    group: ClassVar[str] = "model"

    name: str = field(default="tiny_qwen", metadata={"help": "Label used in run names, cache keys and summaries."})
    weights: str = field(
        default="random",
        metadata={"help": "random: build from the architecture below with seeded random weights (offline); "
                          "pretrained: load model.path, else fetch model.model_id from ModelScope."},
    )
    model_id: Optional[str] = field(default=None, metadata={"help": "ModelScope id, e.g. qwen/Qwen1.5-1.8B-Chat."})
    revision: str = field(default="master", metadata={"help": "ModelScope revision (branch or tag)."})
    path: Optional[str] = field(default=None, metadata={"help": "Local folder with config.json, weights and tokenizer."})
    cache_dir: str = field(default="outputs/modelscope", metadata={"help": "Where ModelScope downloads go."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Needed for the original Qwen (model_type qwen)."})
    dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16."})

    # Architecture figures (transformers Qwen2Config names); used when weights=random.
    num_hidden_layers: int = field(default=2, metadata={"help": "Decoder layers."})
    hidden_size: int = field(default=64, metadata={"help": "Model width."})
    num_attention_heads: int = field(default=4, metadata={"help": "Query heads."})
    num_key_value_heads: int = field(default=2, metadata={"help": "KV heads (GQA when fewer than query heads)."})
    intermediate_size: int = field(default=128, metadata={"help": "MLP width."})
    vocab_size: int = field(default=384, metadata={"help": "Vocabulary size (tiny_qwen: byte tokenizer + specials)."})
    max_position_embeddings: int = field(default=512, metadata={"help": "Longest sequence the rope tables cover."})
    rope_theta: float = field(default=10000.0, metadata={"help": "Rotary embedding base."})
    rms_norm_eps: float = field(default=1e-6, metadata={"help": "RMSNorm epsilon."})
    tie_word_embeddings: bool = field(default=False, metadata={"help": "Share input embedding and LM head."})

    def __post_init__(self) -> None:
        require_choice("model.weights", self.weights, WEIGHT_SOURCES)
        require_choice("model.dtype", self.dtype, MODEL_DTYPES)
        for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size", "max_position_embeddings"):
            require_positive(f"model.{key}", getattr(self, key))
        require(self.hidden_size % self.num_attention_heads == 0, "model.hidden_size", self.hidden_size,
                f"must be divisible by model.num_attention_heads={self.num_attention_heads}")
        require(self.num_attention_heads % self.num_key_value_heads == 0, "model.num_key_value_heads",
                self.num_key_value_heads,
                f"must divide model.num_attention_heads={self.num_attention_heads}")
        # weights=random builds the preset's architecture: a path would change nothing but the cache key.
        require(self.path is None or self.weights == "pretrained", "model.path", self.path,
                "is read only with model.weights=pretrained; model.weights=random builds the model from the "
                "architecture figures and ignores it. Add model.weights=pretrained to load that folder, or drop "
                "model.path")
        if self.weights == "pretrained":
            require(bool(self.path or self.model_id), "model.model_id", self.model_id,
                    "weights=pretrained needs model.model_id (ModelScope) or model.path (local folder)")
