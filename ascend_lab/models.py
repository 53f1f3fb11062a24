"""Building or fetching a Qwen causal LM and its tokenizer from the ``model`` group.

``weights=random`` builds transformers' Qwen2 classes from the architecture figures in the config
with seeded random weights and an offline byte-level tokenizer (no file or network needed), so
the real shapes of a 1.8B model can be exported and benchmarked without a download.
``weights=pretrained`` loads ``model.path`` or fetches ``model.model_id`` with ModelScope;
:func:`local_checkpoint` says what a ``model.path`` folder really holds, so the run's params record
the loaded model rather than the preset's figures.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ascend_lab.config.model import ModelConfig
from ascend_lab.errors import AscendLabError

log = logging.getLogger(__name__)

# Qwen's chat special tokens; the byte tokenizer adds them after the 256 byte tokens.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Attention that traces to plain ONNX ops (the exporter and ATC both need that).
ATTN_IMPLEMENTATION = "eager"
# ModelScope's own connect timeout is 10 s per try, with retries; ours is shorter.
MODELSCOPE_CONNECT_TIMEOUT_S = 5


@dataclass
class LoadedModel:
    model: Any  # transformers causal LM, eval mode
    tokenizer: Any  # PreTrainedTokenizerFast (works offline)
    config: Any  # transformers config


@dataclass(frozen=True)
class ModelSource:
    """What runtime=torch builds in process (its artifact): the model, the seed of random weights and the graph
    module around it (``export.graph``, with ``export.layer_outputs``), so it runs the export's contract."""

    model: ModelConfig
    seed: int
    graph: str
    layer_outputs: bool = False


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def build_byte_tokenizer():
    """A byte-level BPE tokenizer built in code: 256 byte tokens, no merges, Qwen specials.

    Every UTF-8 string (Chinese included) round-trips, one token per byte.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=byte_level_decoder().__getitem__)
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    # Left padding keeps the last position of every row a real token (what generation reads).
    tokenizer.padding_side = "left"
    return tokenizer


@functools.lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (what ByteLevel pre-tokenizes to): symbol → the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:  # control and whitespace bytes move above U+0100
            symbols[b] = chr(256 + extra)
            extra += 1
    return {symbol: b for b, symbol in symbols.items()}


def build_tokenizer(model_cfg: ModelConfig):
    """The tokenizer for ``model_cfg``: the checkpoint's own when pretrained, else the byte one."""
    if model_cfg.weights == "pretrained":
        from transformers import AutoTokenizer

        folder = resolve_pretrained_folder(model_cfg)
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=model_cfg.trust_remote_code)
    tokenizer = build_byte_tokenizer()
    if len(tokenizer) > model_cfg.vocab_size:
        raise AscendLabError(
            f"model.vocab_size={model_cfg.vocab_size} is smaller than the offline byte tokenizer "
            f"({len(tokenizer)} tokens); set model.vocab_size>={len(tokenizer)}.")
    return tokenizer


def qwen2_config(model_cfg: ModelConfig):
    """A transformers Qwen2Config with the architecture figures of ``model_cfg``."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=model_cfg.vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_hidden_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        num_key_value_heads=model_cfg.num_key_value_heads,
        max_position_embeddings=model_cfg.max_position_embeddings,
        rope_theta=model_cfg.rope_theta,
        rms_norm_eps=model_cfg.rms_norm_eps,
        tie_word_embeddings=model_cfg.tie_word_embeddings,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=256,  # <|endoftext|> in the byte tokenizer
        pad_token_id=256,
    )


def load_model(model_cfg: ModelConfig, seed: int, device="cpu") -> LoadedModel:
    """The model (eval mode, ``model.dtype``), its tokenizer and its transformers config."""
    import torch

    dtype = torch_dtype(model_cfg.dtype)
    if model_cfg.weights == "random":
        from transformers import Qwen2ForCausalLM

        config = qwen2_config(model_cfg)
        config._attn_implementation = ATTN_IMPLEMENTATION
        tokenizer = build_tokenizer(model_cfg)
        # Seed, then initialise in float32 (the init routines are defined there) and cast once.
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
        model = model.to(dtype=dtype)
    else:
        from transformers import AutoModelForCausalLM

        folder = resolve_pretrained_folder(model_cfg)
        tokenizer = build_tokenizer(model_cfg)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(folder), dtype=dtype, trust_remote_code=model_cfg.trust_remote_code,
                attn_implementation=ATTN_IMPLEMENTATION)
        except (OSError, ValueError) as exc:
            raise AscendLabError(
                f"could not load the model in {folder}: {_first_line(exc)}. The folder needs config.json, "
                "the weights (*.safetensors or pytorch_model.bin) and the tokenizer files; "
                "original Qwen checkpoints also need model.trust_remote_code=true.") from exc
        config = model.config
    model.eval()
    model.to(device)
    return LoadedModel(model=model, tokenizer=tokenizer, config=config)


def with_launch_paths(model_cfg: ModelConfig, resolve) -> ModelConfig:
    """``model_cfg`` with ``path``/``cache_dir`` made absolute by ``resolve`` (e.g. ``JobContext.path``)."""
    import dataclasses

    return dataclasses.replace(model_cfg, cache_dir=str(resolve(model_cfg.cache_dir)),
                               path=str(resolve(model_cfg.path)) if model_cfg.path else None)


def resolve_pretrained_folder(model_cfg: ModelConfig) -> Path:
    """``model.path`` when given, else a ModelScope snapshot of ``model.model_id`` (downloaded once)."""
    if model_cfg.path:
        folder = Path(model_cfg.path).expanduser()
        if not folder.exists():
            raise AscendLabError(f"model.path={model_cfg.path}: {folder.resolve()} does not exist. Point model.path "
                                 "at the folder of a checkpoint (config.json, weights and tokenizer files).")
        if not (folder / "config.json").is_file():
            raise AscendLabError(
                f"model.path={model_cfg.path}: no config.json in {folder.resolve()}. Point model.path at a "
                "folder saved by save_pretrained or downloaded from ModelScope/Hugging Face.")
        return folder
    return fetch_modelscope(model_cfg.model_id, model_cfg.cache_dir, model_cfg.revision)


# The architecture figures a run's params report: ModelConfig's fields, named as in Qwen2Config.
ARCHITECTURE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                       "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                       "tie_word_embeddings")
# Where config.json keeps a figure, first match wins: transformers 5 nests rope_theta in rope_parameters
# (older files have it at the top, some in rope_scaling), and the original Qwen (remote code) has its own names.
CONFIG_JSON_KEYS = {
    "rope_theta": ("rope_theta", "rope_parameters.rope_theta", "rope_scaling.rope_theta", "rotary_emb_base"),
    "rms_norm_eps": ("rms_norm_eps", "layer_norm_epsilon"),
}
# Logged for a figure config.json does not set: transformers then applies its own default, which
# depends on the model class (an honest "unknown here" rather than the preset's number).
NOT_IN_CONFIG_JSON = "not set in config.json"


@dataclass(frozen=True)
class LocalCheckpoint:
    """What a local checkpoint (``model.path``) really is, for the run's record.

    The preset's architecture figures and ModelScope id describe the preset, not a folder loaded by
    path: a run records the folder's own figures (from its config.json, which is what transformers
    builds the model from), the folder and the sha256 of its config.json instead.
    """

    folder: Path
    config_sha256: str
    architecture: dict[str, Any]
    preset_model_id: str | None

    def params(self) -> dict[str, Any]:
        """Params (``model.<key>``) to log in place of the preset's: the folder's figures, and the folder
        as ``model.model_id`` (what was loaded; from_pretrained takes a folder where it takes an id)."""
        return {**{f"model.{k}": v for k, v in self.architecture.items()}, "model.model_id": str(self.folder)}

    def tags(self) -> dict[str, str]:
        return {"model.path": str(self.folder), **self.identity(), "model.preset_model_id": self.preset_model_id or "none"}

    def identity(self) -> dict[str, str]:
        """What makes a job on this folder another job beyond its params (the resume hash covers it):
        another config.json at the same path, even with the same figures, is another model."""
        return {"model.config_sha256": self.config_sha256}


def local_checkpoint(model_cfg: ModelConfig) -> LocalCheckpoint | None:
    """The record of ``model.path`` when the model is loaded from it (``weights=pretrained``), else None.

    ``model_cfg.path`` should already be absolute (:func:`with_launch_paths`). Reads config.json only:
    cheap enough for a job's start, before the run's params are logged (MLflow params cannot change).
    """
    if model_cfg.weights != "pretrained" or not model_cfg.path:
        return None
    import hashlib
    import json

    folder = resolve_pretrained_folder(model_cfg).resolve()
    config_file = folder / "config.json"
    raw = config_file.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise AscendLabError(f"model.path={model_cfg.path}: {config_file} is not valid JSON ({exc}). Point "
                             "model.path at a folder saved by save_pretrained or downloaded from ModelScope.") from exc
    architecture = {name: _config_json_value(config, name) for name in ARCHITECTURE_FIELDS}
    return LocalCheckpoint(folder, hashlib.sha256(raw).hexdigest(), architecture, model_cfg.model_id)


def _config_json_value(config: dict, name: str) -> Any:
    for dotted in CONFIG_JSON_KEYS.get(name, (name,)):
        value: Any = config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    return NOT_IN_CONFIG_JSON


def fetch_modelscope(model_id: str, cache_dir: str | Path, revision: str) -> Path:
    """A ModelScope snapshot of ``model_id`` in ``cache_dir``.

    ModelScope retries an unreachable endpoint for tens of seconds; a quick connect to it first
    makes the offline case fail at once (a snapshot already in the cache is still used then).
    """
    os.environ.setdefault("MODELSCOPE_API_HTTP_CLIENT_CONNECT_TIMEOUT", str(MODELSCOPE_CONNECT_TIMEOUT_S))
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        raise AscendLabError(f"modelscope is not installed ({exc}); pip install modelscope, "
                             "or give a local folder with model.path=<folder>.") from exc
    unreachable = _endpoint_unreachable()
    log.info("fetching %s (revision %s) from ModelScope into %s", model_id, revision, cache_dir)
    try:
        folder = snapshot_download(model_id, cache_dir=str(cache_dir), revision=revision,
                                   local_files_only=unreachable is not None)
    except Exception as exc:  # network, unknown id, auth: all end in the same advice
        cause = f"{type(exc).__name__}: {_first_line(exc)}"
        if unreachable:
            cause = f"{unreachable}; no cached copy either ({cause})"
        raise AscendLabError(
            f"could not fetch model.model_id={model_id} (revision {revision}) from ModelScope into "
            f"model.cache_dir={cache_dir}: {cause}. Check the id and the network, or provide the files "
            "yourself: download the model elsewhere (e.g. `modelscope download --model <id>` or git clone), "
            "copy the folder here and run with model.path=<folder>."
        ) from exc
    return Path(folder)


def _endpoint_unreachable(timeout_s: float = MODELSCOPE_CONNECT_TIMEOUT_S) -> str | None:
    """Why the ModelScope endpoint cannot be reached, or None (also None behind a proxy: trust it)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    try:
        from modelscope.hub.utils.utils import get_endpoint

        endpoint = get_endpoint()
    except Exception:  # an older/newer modelscope layout: let snapshot_download find out
        return None
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{endpoint} is unreachable ({exc})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "(no message)"
