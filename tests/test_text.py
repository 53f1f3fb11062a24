"""Generated ids as display text: invalid UTF-8 escaped, never '�'; other tokenizers fall back to decode."""

from __future__ import annotations

import pytest

from ascend_lab.models import byte_level_decoder, build_byte_tokenizer
from ascend_lab.text import RANDOM_WEIGHTS_NOTE, display_text, escape_bytes, weights_note

NI = list("你".encode())  # e4 bd a0
BYTE_SYMBOL = {b: symbol for symbol, b in byte_level_decoder().items()}


def symbols(data: bytes) -> str:
    """``data`` in GPT-2's byte-level alphabet: what a byte-level BPE vocabulary holds."""
    return "".join(BYTE_SYMBOL[b] for b in data)


@pytest.fixture(scope="module")
def byte_tokenizer():
    return build_byte_tokenizer()


def merged_bpe_tokenizer(sequence_decoder: bool):
    """A byte-level BPE like Qwen's: whole characters and parts of characters as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {BYTE_SYMBOL[b]: b for b in range(256)}
    half, ni = symbols(bytes(NI[:2])), symbols(bytes(NI))
    vocab.update({half: 256, ni: 257})
    merges = [(BYTE_SYMBOL[NI[0]], BYTE_SYMBOL[NI[1]]), (half, BYTE_SYMBOL[NI[2]])]
    core = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.Sequence([decoders.ByteLevel()]) if sequence_decoder else decoders.ByteLevel()
    core.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")


def test_invalid_bytes_are_escaped_not_replaced(byte_tokenizer):
    ids = NI + NI[:2]  # 你 and the first two bytes of another 你: random weights do this
    assert "\ufffd" in byte_tokenizer.decode(ids)  # the problem: '�' hides the bytes
    assert display_text(byte_tokenizer, ids) == "你\\xe4\\xbd"


def test_valid_text_round_trips(byte_tokenizer):
    prompt = "你好,昇腾! Ascend 910B\n\tok"
    assert display_text(byte_tokenizer, byte_tokenizer(prompt)["input_ids"]) == prompt


def test_special_tokens_are_shown_or_skipped(byte_tokenizer):
    eos = byte_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert display_text(byte_tokenizer, [*NI, eos, *NI[:1]]) == "你<|endoftext|>\\xe4"
    assert display_text(byte_tokenizer, [*NI, eos], skip_special_tokens=True) == "你"


def test_ids_beyond_the_tokenizer_are_named(byte_tokenizer):
    # tiny_qwen's vocab_size is 384, the byte tokenizer has 259 tokens: random weights pick the rest too.
    assert display_text(byte_tokenizer, [*NI, 300, 65]) == "你<id 300>A"


def test_control_characters_are_escaped_newline_and_tab_kept(byte_tokenizer):
    assert display_text(byte_tokenizer, [0x1B, ord("["), ord("2"), ord("J"), 0x0A, 0x09, 0x08]) == "\\x1b[2J\n\t\\x08"


@pytest.mark.parametrize("sequence_decoder", [False, True], ids=["ByteLevel", "Sequence[ByteLevel]"])
def test_merged_tokens_split_characters(sequence_decoder):
    tokenizer = merged_bpe_tokenizer(sequence_decoder)
    assert tokenizer("你")["input_ids"] == [257]
    half = 256  # e4 bd: a token that is part of a character
    assert display_text(tokenizer, [half, NI[2]]) == "你"  # completed by the next token
    assert display_text(tokenizer, [257, half]) == "你\\xe4\\xbd"
    assert display_text(tokenizer, [257, half, 258]) == "你\\xe4\\xbd<|endoftext|>"


def test_tokenizers_without_bytes_fall_back_to_decode():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"你好": 0, "昇腾": 1, "[UNK]": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    assert display_text(tokenizer, [0, 1]) == tokenizer.decode([0, 1])


class SlowByteTokenizer:
    """A slow (Python) GPT-2-style tokenizer: it carries its own byte_decoder."""

    byte_decoder = byte_level_decoder()
    all_special_ids = [256]
    added_tokens_decoder = {256: "<|endoftext|>"}

    def convert_ids_to_tokens(self, ids):
        return ["<|endoftext|>" if i == 256 else BYTE_SYMBOL[i] for i in ids]

    def decode(self, ids, skip_special_tokens=False):
        raise AssertionError("display_text must not fall back to decode for a byte-level tokenizer")


class TiktokenStyleTokenizer:
    """The original Qwen's tokenizer (remote code, tiktoken): tokens are bytes, specials are str."""

    all_special_ids = [9]
    added_tokens_decoder = {}
    vocab = {0: "你".encode()[:2], 1: "你".encode()[2:], 2: b"ok", 9: "<|endoftext|>"}

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i] for i in ids]

    def decode(self, ids, skip_special_tokens=False):
        raise AssertionError("display_text must not fall back to decode when tokens are bytes")


@pytest.mark.parametrize("tokenizer,ids,expected", [
    (SlowByteTokenizer(), [*NI, NI[0], 256], "你\\xe4<|endoftext|>"),
    (TiktokenStyleTokenizer(), [0, 1, 2, 0, 9], "你ok\\xe4\\xbd<|endoftext|>"),
], ids=["slow byte_decoder", "tiktoken bytes"])
def test_other_byte_level_tokenizers(tokenizer, ids, expected):
    assert display_text(tokenizer, ids) == expected


def test_escape_bytes():
    assert escape_bytes("昇腾".encode() + b"\xff\x7f") == "昇腾\\xff\\x7f"
    assert escape_bytes(b"") == ""


def test_random_weights_note():
    assert weights_note("random") == RANDOM_WEIGHTS_NOTE
    assert "model.weights=random" in RANDOM_WEIGHTS_NOTE and "meaningless by design" in RANDOM_WEIGHTS_NOTE
    assert weights_note("pretrained") is None
