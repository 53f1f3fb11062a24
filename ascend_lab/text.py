"""Generated tokens as text a person can read, and what to say when the text cannot mean anything.

A byte-level BPE tokenizer (Qwen's, and the offline one of ``models.build_byte_tokenizer``) maps token
ids to bytes, not characters. A model with random weights picks tokens with no regard for UTF-8, so
``tokenizer.decode`` meets byte sequences that are not characters and prints each as U+FFFD '�': the
output looks like a broken terminal or a wrong encoding, and the bytes themselves are lost.
:func:`display_text` shows those bytes escaped (``\\xe4\\xbd``) instead, and every character that is
valid as is. task=infer prints it, after :func:`weights_note` where the weights are random.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

RANDOM_WEIGHTS_NOTE = "weights are random (model.weights=random): the text is meaningless by design"


def weights_note(weights: str) -> str | None:
    """The line to print above generated text when ``model.weights`` says the text cannot mean anything."""
    return RANDOM_WEIGHTS_NOTE if weights == "random" else None


def display_text(tokenizer: Any, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """``ids`` as text: valid UTF-8 as characters, invalid bytes and control characters escaped as ``\\xNN``.

    Byte-level tokenizers (a ByteLevel decoder, a slow tokenizer's ``byte_decoder``, or tokens that are
    bytes as in the original Qwen's tiktoken tokenizer) are decoded token by token to bytes; an id the
    tokenizer does not have (random weights over a vocabulary larger than the tokenizer's) shows as
    ``<id N>``, where ``decode`` would drop it. Other tokenizers (SentencePiece, ...) have no bytes to show:
    their ``decode`` is used as is.
    """
    ids = [int(i) for i in ids]
    byte_decoder = _byte_decoder(tokenizer)
    if byte_decoder is None and not _has_bytes_tokens(tokenizer, ids):
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    special = set(getattr(tokenizer, "all_special_ids", ()))
    added = set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    pieces: list[str] = []
    pending = bytearray()
    for token_id, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if token_id in special and skip_special_tokens:
            continue
        as_bytes = _token_bytes(token, byte_decoder) if token_id not in added else None
        if as_bytes is not None:
            pending += as_bytes
            continue
        pieces.append(escape_bytes(bytes(pending)))
        pending.clear()
        pieces.append(f"<id {token_id}>" if token is None else str(token))
    pieces.append(escape_bytes(bytes(pending)))
    return "".join(pieces)


def escape_bytes(data: bytes) -> str:
    """UTF-8 ``data`` as text, each byte that is not part of a valid character as ``\\xNN``.

    Control characters other than newline and tab are escaped too: random bytes include ESC and
    backspace, which would rewrite the terminal around them.
    """
    text = data.decode("utf-8", errors="backslashreplace")
    return "".join(_escape_control(ch) for ch in text)


def _escape_control(ch: str) -> str:
    code = ord(ch)
    if ch in "\n\t" or not (code < 0x20 or 0x7F <= code < 0xA0):
        return ch
    return f"\\x{code:02x}"


def _token_bytes(token: Any, byte_decoder: dict[str, int] | None) -> bytes | None:
    """The bytes a vocabulary token stands for, or None where it is not a byte token (special, unknown)."""
    if isinstance(token, bytes):
        return token
    if byte_decoder is None or not isinstance(token, str) or not token:
        return None
    try:
        return bytes(byte_decoder[ch] for ch in token)
    except KeyError:  # a character outside the byte alphabet: an added token's literal text
        return None


def _byte_decoder(tokenizer: Any) -> dict[str, int] | None:
    """GPT-2's symbol → byte table where ``tokenizer`` is byte-level BPE, else None."""
    table = getattr(tokenizer, "byte_decoder", None)  # slow GPT-2-style tokenizers carry their own
    if isinstance(table, dict) and table:
        return table
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None or not _is_byte_level(decoder):
        return None
    from ascend_lab.models import byte_level_decoder

    return byte_level_decoder()


def _is_byte_level(decoder: Any) -> bool:
    """Whether a ``tokenizers`` decoder is ByteLevel, alone or inside a Sequence."""
    try:
        state = json.loads(decoder.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return type(decoder).__name__ == "ByteLevel"
    parts = state.get("decoders") or [state]
    return any(part.get("type") == "ByteLevel" for part in parts)


def _has_bytes_tokens(tokenizer: Any, ids: list[int]) -> bool:
    """Whether the tokenizer's tokens are bytes objects (the original Qwen's tiktoken-based tokenizer)."""
    try:
        return any(isinstance(t, bytes) for t in tokenizer.convert_ids_to_tokens(ids[:8]))
    except Exception:  # noqa: BLE001 - a tokenizer that cannot even do this falls back to decode
        return False
