"""The server's figures: Prometheus text at ``GET /metrics`` (prometheus_client, one registry per server) and the
same counts as MLflow metrics (:meth:`ServerMetrics.snapshot`)."""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

PREFIX = "ascend_lab_serve"
# Seconds; vLLM's TTFT and inter-token buckets cover the same range (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0)
ITL_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# Samples kept for the MLflow percentiles (the most recent ones; the histograms count every one).
KEPT_SAMPLES = 10000


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "HTTP requests to /v1 by endpoint and status code.",
                                ["endpoint", "code"], registry=r)
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for a batch row.", registry=r)
        self.running = Gauge(f"{PREFIX}_running_batch", "Requests decoding in the batch.", registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Arrival to first token.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds", "Time between two tokens of a request.",
                             buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of admitted requests.", registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Tokens generated.", registry=r)
        self._lock = threading.Lock()
        self._ttft: list[float] = []
        self._itl: list[float] = []
        self._codes: dict[str, int] = {}
        self._tokens = {"prompt_tokens_total": 0, "generation_tokens_total": 0}

    # scheduler observer

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self.generation_tokens.inc()
        with self._lock:
            self._tokens["generation_tokens_total"] += 1
            self._ttft = self._ttft[-KEPT_SAMPLES:] + [seconds]

    def inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)
        self.generation_tokens.inc()
        with self._lock:
            self._tokens["generation_tokens_total"] += 1
            self._itl.append(seconds)
            if len(self._itl) > 2 * KEPT_SAMPLES:
                self._itl = self._itl[-KEPT_SAMPLES:]

    def counts(self, queued: int, running: int) -> None:
        self.queue_depth.set(queued)
        self.running.set(running)

    # app

    def admitted(self, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        with self._lock:
            self._tokens["prompt_tokens_total"] += prompt_tokens

    def request_done(self, endpoint: str, code: int) -> None:
        self.requests.labels(endpoint, str(code)).inc()
        with self._lock:
            key = f"requests_{code}"
            self._codes[key] = self._codes.get(key, 0) + 1

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def snapshot(self) -> dict[str, float]:
        """MLflow figures: counts so far and TTFT/ITL mean, median and p99 (ms) of the kept samples."""
        with self._lock:
            ttft, itl, codes, tokens = list(self._ttft), list(self._itl), dict(self._codes), dict(self._tokens)
        figures: dict[str, float] = {k: float(v) for k, v in {**codes, **tokens}.items()}
        figures["requests_total"] = float(sum(codes.values()))
        for name, values in (("server_ttft_ms", ttft), ("server_itl_ms", itl)):
            if values:
                ms = np.asarray(values) * 1e3
                figures.update({f"{name}_mean": float(ms.mean()), f"{name}_p50": float(np.median(ms)),
                                f"{name}_p99": float(np.percentile(ms, 99))})
        return figures
