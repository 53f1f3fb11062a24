"""Serving figures with the definitions of vLLM's ``vllm bench serve`` (``vllm/benchmarks/serve.py``,
``calculate_metrics``), computed from the load generator's per-request records:

- TTFT: request sent → first non-empty output; E2EL: request sent → last byte of the response;
- TPOT: per request, (E2EL − TTFT) / (output tokens − 1), over requests with more than one output token;
- ITL: every gap between two consecutive outputs of a request, all requests pooled;
- request throughput: completed requests / duration; output throughput: output tokens / duration, the duration
  running from the first request sent to the last one completed;
- goodput: requests meeting every ``loadtest.slo_*`` (TTFT, TPOT, E2EL) / duration.

Each latency as mean, median and p99 (numpy's linear-interpolation percentile, as vLLM computes them), in ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RequestRecord:
    """One request as the load generator recorded it (seconds)."""

    start: float
    end: float
    success: bool
    ttft: float | None = None
    latency: float | None = None
    output_tokens: int = 0
    prompt_tokens: int = 0
    itl: tuple[float, ...] = ()


def _stats(name: str, values_s: list[float]) -> dict[str, float]:
    if not values_s:
        return {}
    ms = np.asarray(values_s, dtype=np.float64) * 1e3
    return {f"{name}_ms_mean": float(ms.mean()), f"{name}_ms_median": float(np.median(ms)),
            f"{name}_ms_p99": float(np.percentile(ms, 99))}


def serving_figures(records: list[RequestRecord], slos_ms: dict[str, float]) -> dict[str, float]:
    ok = [r for r in records if r.success and r.latency is not None]
    figures: dict[str, float] = {"requests_completed": float(len(ok)), "requests_failed": float(len(records) - len(ok))}
    if not ok:
        return figures
    duration = max(r.end for r in records) - min(r.start for r in records)
    ttft = [r.ttft for r in ok if r.ttft is not None]
    tpot = {id(r): (r.latency - r.ttft) / (r.output_tokens - 1) for r in ok
            if r.ttft is not None and r.output_tokens > 1}
    itl = [gap for r in ok for gap in r.itl]
    output_tokens = sum(r.output_tokens for r in ok)
    figures.update({
        "duration_s": duration,
        "total_input_tokens": float(sum(r.prompt_tokens for r in ok)),
        "total_output_tokens": float(output_tokens),
        "request_throughput_rps": len(ok) / duration,
        "output_throughput_tokens_s": output_tokens / duration,
        "total_token_throughput_tokens_s": (output_tokens + sum(r.prompt_tokens for r in ok)) / duration,
        **_stats("ttft", ttft), **_stats("tpot", list(tpot.values())), **_stats("itl", itl),
        **_stats("e2el", [r.latency for r in ok]),
    })
    if slos_ms:
        def good(r: RequestRecord) -> bool:
            got = {"ttft": r.ttft, "tpot": tpot.get(id(r), 0.0), "e2el": r.latency}
            return all(got[k] is not None and got[k] * 1e3 <= limit for k, limit in slos_ms.items())

        figures["goodput_rps"] = sum(good(r) for r in ok) / duration
    return figures
