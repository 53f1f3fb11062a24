"""The model group: the offline tiny Qwen, the real presets' shapes, pretrained loading and its errors."""

from __future__ import annotations

import time

import pytest
import torch
from omegaconf import OmegaConf

from ascend_lab.config.model import ModelConfig
from ascend_lab.errors import AscendLabError
from ascend_lab.models import build_byte_tokenizer, build_tokenizer, load_model, qwen2_config


def test_byte_tokenizer_round_trips_chinese_and_specials():
    tokenizer = build_byte_tokenizer()
    text = "你好,昇腾!<|im_start|>user\nhi<|im_end|>"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert max(ids) < 384 and len(tokenizer) <= 384
    # One token per UTF-8 byte outside the specials: 你 is three bytes.
    assert tokenizer("你")["input_ids"] == list("你".encode("utf-8"))
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") >= 256
    assert tokenizer.eos_token == "<|endoftext|>"


def test_tokenizer_too_big_for_vocab_is_a_clear_error():
    with pytest.raises(AscendLabError, match="model.vocab_size"):
        build_tokenizer(ModelConfig(vocab_size=100))


def test_tiny_qwen_is_seeded_eval_and_in_dtype():
    a = load_model(ModelConfig(), seed=0)
    b = load_model(ModelConfig(), seed=0)
    c = load_model(ModelConfig(), seed=1)
    assert type(a.model).__name__ == "Qwen2ForCausalLM" and not a.model.training
    assert a.config.num_hidden_layers == 2 and a.config.vocab_size == 384
    ids = torch.tensor([a.tokenizer("你好,昇腾!")["input_ids"]])
    with torch.no_grad():
        la, lb, lc = (m.model(ids).logits for m in (a, b, c))
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lc)
    assert la.shape == (1, ids.shape[1], 384)
    for dtype in ("float16", "bfloat16"):
        half = load_model(ModelConfig(dtype=dtype), seed=0)
        assert half.model.dtype == getattr(torch, dtype)


@pytest.mark.parametrize("preset,expected_params", [
    ("qwen1_5_1_8b_chat", 1.836e9),
    ("qwen2_5_0_5b_instruct", 0.494e9),
    ("qwen_1_8b_chat", 1.836e9),
])
def test_presets_describe_the_real_shapes(compose, preset, expected_params):
    from transformers import Qwen2ForCausalLM

    cfg = OmegaConf.to_object(compose(f"model={preset}", "model.weights=random"))
    config = qwen2_config(cfg.model)
    with torch.device("meta"):  # shapes only: no memory for 1.8B weights
        model = Qwen2ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(expected_params, rel=0.01)
    assert build_tokenizer(cfg.model)("你好")["input_ids"]  # the offline tokenizer, ids within vocab


def test_pretrained_local_folder_loads_the_saved_model(tmp_path):
    original = load_model(ModelConfig(), seed=3)
    folder = tmp_path / "tiny_ckpt"
    original.model.save_pretrained(folder)
    original.tokenizer.save_pretrained(folder)
    loaded = load_model(ModelConfig(weights="pretrained", path=str(folder), dtype="float32"), seed=0)
    ids = torch.tensor([loaded.tokenizer("你好,昇腾!")["input_ids"]])
    assert loaded.tokenizer.decode(ids[0]) == "你好,昇腾!"
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, original.model(ids).logits)
    assert not loaded.model.training


def test_pretrained_folder_without_config_names_model_path(tmp_path):
    with pytest.raises(AscendLabError, match=r"model.path=.*config.json"):
        load_model(ModelConfig(weights="pretrained", path=str(tmp_path)), seed=0)


def test_unfetchable_model_id_fails_fast_and_says_how_to_fix(tmp_path):
    cache_dir = tmp_path / "ms_cache"
    cfg = ModelConfig(weights="pretrained", model_id="ascend-lab-test/no-such-model", cache_dir=str(cache_dir))
    start = time.perf_counter()
    with pytest.raises(AscendLabError) as info:
        load_model(cfg, seed=0)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert "model.model_id=ascend-lab-test/no-such-model" in message
    assert str(cache_dir) in message
    assert "model.path=<folder>" in message
    assert elapsed < 60, f"took {elapsed:.0f}s"
