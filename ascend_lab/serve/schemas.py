"""Request bodies of the OpenAI API subset served (https://platform.openai.com/docs/api-reference/completions and
/chat), with vLLM's ``ignore_eos`` and ``min_tokens`` extensions, which load generators send for fixed-length outputs.
Fields OpenAI clients send that change nothing here (``user``, ``presence_penalty`` at 0, ...) are accepted and
ignored, as vLLM does."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Generation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(default=None, description="null: serve.default_max_tokens")
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0, description="null or 0: greedy")
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Generation):
    prompt: Union[str, list[str], list[int]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
