"""`loadtest` group: task=loadtest, a load generator (evalscope perf) against an OpenAI-compatible endpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional
from urllib.parse import urlparse

from ascend_lab.errors import require, require_choice, require_positive

TARGETS = ("self", "url")
APIS = ("completions", "chat")


@dataclass
class LoadtestConfig:
    group: ClassVar[str] = "loadtest"

    target: Optional[str] = field(default=None, metadata={
        "help": "self: serve this config (task=serve, on a free 127.0.0.1 port, in this process) and measure it; "
                "url: measure loadtest.base_url. null: url when base_url is set, else self."})
    base_url: Optional[str] = field(default=None, metadata={
        "help": "An OpenAI-compatible server's base URL (http://host:port, with or without /v1): ours, vLLM, "
                "vllm-ascend, MindIE. Only with target=url."})
    model: Optional[str] = field(default=None, metadata={
        "help": "The model id sent in each request; null: the first id the server's /v1/models lists."})
    api_key: Optional[str] = field(default=None, metadata={"help": "Bearer token for the target, if it checks one."})
    api: str = field(default="completions", metadata={
        "help": "completions (/v1/completions: the prompt as given) or chat (/v1/chat/completions: the server's "
                "chat template wraps it)."})
    concurrency: int = field(default=1, metadata={
        "help": "Requests in flight at once; sweep it with -m loadtest.concurrency=1,4,8 for the "
                "throughput-latency curve."})
    rate: Optional[float] = field(default=None, metadata={
        "help": "Requests started per second (Poisson arrivals); null: a new request as soon as one ends."})
    requests: int = field(default=16, metadata={"help": "Requests sent in one run."})
    input_tokens: int = field(default=32, metadata={
        "help": "Random prompts: tokens per prompt (drawn from the tokenizer's vocabulary, offline)."})
    output_tokens: int = field(default=32, metadata={
        "help": "Tokens each request asks for (max_tokens, with min_tokens and ignore_eos so every request "
                "generates exactly this many where the server supports them, as vLLM does)."})
    prompts_file: Optional[str] = field(default=None, metadata={
        "help": "UTF-8 text file, one prompt per line (Chinese works), used instead of random prompts."})
    tokenizer_path: Optional[str] = field(default=None, metadata={
        "help": "Folder of a Hugging Face tokenizer for random prompts and token counts; null with target=self: "
                "the served model's tokenizer. Required for random prompts against a url."})
    slo_ttft_ms: Optional[float] = field(default=None, metadata={
        "help": "Goodput: a request counts as good only if its time to first token is at most this (ms)."})
    slo_tpot_ms: Optional[float] = field(default=None, metadata={
        "help": "Goodput: ... and its time per output token at most this (ms)."})
    slo_e2el_ms: Optional[float] = field(default=None, metadata={
        "help": "Goodput: ... and its end-to-end latency at most this (ms)."})
    timeout_s: float = field(default=600.0, metadata={
        "help": "Seconds the whole load run may take before it is stopped (and the job fails)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random prompts."})

    def __post_init__(self) -> None:
        if self.target is not None:
            require_choice("loadtest.target", self.target, TARGETS)
        target = self.resolved_target
        if target == "self":
            require(self.base_url is None, "loadtest.base_url", self.base_url,
                    "is not read with loadtest.target=self (the server is started here); drop one of them")
            require(self.api_key is None, "loadtest.api_key", self.api_key,
                    "is not read with loadtest.target=self (use serve.api_key)")
        else:
            require(self.base_url is not None, "loadtest.base_url", None,
                    "loadtest.target=url needs the server's base URL, e.g. loadtest.base_url=http://127.0.0.1:8000")
            parsed = urlparse(self.base_url)
            require(parsed.scheme in ("http", "https") and bool(parsed.netloc), "loadtest.base_url", self.base_url,
                    "must be an http(s)://host:port URL")
        require_choice("loadtest.api", self.api, APIS)
        for key in ("concurrency", "requests", "input_tokens", "output_tokens"):
            require_positive(f"loadtest.{key}", getattr(self, key))
        for key in ("rate", "slo_ttft_ms", "slo_tpot_ms", "slo_e2el_ms"):
            value = getattr(self, key)
            require(value is None or (math.isfinite(value) and value > 0), f"loadtest.{key}", value,
                    "must be a finite number > 0, or null")
        require(math.isfinite(self.timeout_s) and self.timeout_s > 0, "loadtest.timeout_s", self.timeout_s,
                "must be a finite number of seconds > 0")

    @property
    def resolved_target(self) -> str:
        return self.target or ("url" if self.base_url is not None else "self")

    @property
    def slos(self) -> dict[str, float]:
        """The goodput limits that are set, by figure (ttft, tpot, e2el), in ms."""
        return {name: value for name, value in (("ttft", self.slo_ttft_ms), ("tpot", self.slo_tpot_ms),
                                                 ("e2el", self.slo_e2el_ms)) if value is not None}
