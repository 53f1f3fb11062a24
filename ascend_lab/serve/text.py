"""Token ids → streamed text: incremental detokenization that never splits a character, stop strings, chat prompts."""

from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder returns for bytes that do not yet make a whole UTF-8 character
# Qwen's chat format (ChatML), used where the tokenizer brings no chat template of its own (the offline byte
# tokenizer of model=tiny_qwen has ChatML's special tokens but no template).
CHATML_STOP = "<|im_end|>"


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt text of a chat: the tokenizer's own chat template, else ChatML with the assistant's turn opened."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}{CHATML_STOP}\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def stop_token_ids(tokenizer) -> frozenset[int]:
    """Tokens that end a generation: the tokenizer's end-of-sequence and ChatML's end of turn, where it has them."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    end_of_turn = tokenizer.convert_tokens_to_ids(CHATML_STOP)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return frozenset(ids)


class TextStream:
    """Text deltas of a growing token sequence, cut at the first stop string.

    Decoding follows vLLM's incremental detokenizer (``vllm/transformers_utils/detokenizer_utils.py``): a window of
    a few tokens before the unread ones is decoded again, and a delta ending in U+FFFD (a character whose bytes have
    not all arrived) is held back until they have, so a multi-byte character is never split across deltas. Text that
    could be the start of a stop string is held back too, so a stop string is never sent.
    """

    def __init__(self, tokenizer, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.pending = ""
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """The text ``token`` completes (possibly empty); after a stop string, nothing."""
        if self.stopped:
            return ""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return self._cut("")
        self.prefix, self.read = self.read, len(self.ids)
        return self._cut(after[len(before):])

    def finish(self) -> str:
        """What is held back, at the end of the generation (an incomplete character's bytes are dropped)."""
        if self.stopped:
            return ""
        rest = self._decode(self.ids[self.prefix:])[len(self._decode(self.ids[self.prefix:self.read])):]
        text = self.pending + rest.rstrip(REPLACEMENT)
        self.pending = ""
        return text

    def _cut(self, delta: str) -> str:
        text = self.pending + delta
        if not self.stops:
            self.pending = ""
            return text
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.pending = ""
            return text[:min(hits)]
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]
