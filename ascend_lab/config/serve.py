"""`serve` group: task=serve's OpenAI-compatible HTTP server (also what task=loadtest loadtest.target=self serves)."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ascend_lab.errors import require, require_positive

# The environment variable that turns on bearer-token checks when serve.api_key is not set.
API_KEY_ENV = "ASCEND_LAB_API_KEY"


@dataclass
class ServeConfig:
    group: ClassVar[str] = "serve"

    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to bind. The loopback default serves this machine only; 0.0.0.0 exposes the server to "
                "the network (set serve.api_key then)."})
    port: int = field(default=8000, metadata={"help": "TCP port; 0 picks a free one (printed at start-up)."})
    api_key: Optional[str] = field(default=None, metadata={
        "help": f"Bearer token every /v1 request must carry (401 without it); null: the {API_KEY_ENV} environment "
                "variable if set, else no check. /health and /metrics stay open."})
    model_name: Optional[str] = field(default=None, metadata={
        "help": "The model id clients send and /v1/models lists; null: model.name."})
    max_batch: int = field(default=4, metadata={
        "help": "Requests decoded together (rows of the engine's batch). torch and onnxruntime: a request joins "
                "the running batch at the next step; acl: the .om's compiled batch must equal this."})
    queue_size: int = field(default=32, metadata={
        "help": "Requests waiting for a free row; one more is answered 429 with Retry-After."})
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds of a 429 (queue full)."})
    default_max_tokens: int = field(default=16, metadata={
        "help": "Tokens generated when a request gives no max_tokens."})
    drain_s: float = field(default=10.0, metadata={
        "help": "On SIGTERM or Ctrl-C: seconds requests in flight may take to finish before they are cancelled."})
    metrics_interval_s: float = field(default=10.0, metadata={
        "help": "Seconds between the server's figures logged to its MLflow run (and once more at shutdown)."})
    log_requests: bool = field(default=False, metadata={"help": "Log one access line per HTTP request."})

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            require(self.host == "localhost", "serve.host", self.host,
                    "must be an IP address (127.0.0.1 for this machine only, 0.0.0.0 for every interface) or localhost")
        require(0 <= self.port <= 65535, "serve.port", self.port, "must be a TCP port 0..65535 (0: a free one)")
        require(self.api_key is None or (self.api_key.strip() != "" and self.api_key.isascii()
                                         and self.api_key.isprintable()), "serve.api_key", self.api_key,
                "must be a non-empty token of printable ASCII characters (it travels in an HTTP header), or null")
        require(self.model_name is None or self.model_name.strip() != "", "serve.model_name", self.model_name,
                "must be a non-empty id, or null for model.name")
        for key in ("max_batch", "queue_size", "retry_after_s", "default_max_tokens"):
            require_positive(f"serve.{key}", getattr(self, key))
        for key in ("drain_s", "metrics_interval_s"):
            value = getattr(self, key)
            require(math.isfinite(value) and value > 0, f"serve.{key}", value, "must be a finite number of seconds > 0")
