"""The two benchmark scenarios and their inputs.

``forward``: one pass over ``[batch, seq_len]`` (the walkthrough's figure; on the kv_cache graph, the
prompt's prefill into an empty cache). ``generate``: prefill then exactly ``new_tokens`` greedy tokens,
with the host↔device traffic per decoded token where the runtime counts it (pyACL).
Both warm up untimed, then time through :func:`ascend_lab.device.measure` until both
``iterations`` and ``min_duration_s`` are reached; the host RSS peak is the kernel's
(:mod:`ascend_lab.bench.memory`) and every figure comes from :func:`ascend_lab.stats.summarize`. The timed
part is the job's telemetry window (:func:`ascend_lab.telemetry.timed_window`: its energy figures cover
exactly that part).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ascend_lab.bench.generation import GenerationResult, greedy_generate
from ascend_lab.bench.memory import device_peak_mb, peak_rss_mb, reset_peak_rss, rss_mb
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.device import measure
from ascend_lab.errors import ConfigError
from ascend_lab.stats import per_second, summarize
from ascend_lab.telemetry import timed_window

LATENCY_STATS = ("mean", "p50", "p90", "p95", "p99", "std", "min", "max")
# pyACL's per-run split, reported in ais_bench's terms (NPU_compute_time excludes H2D and D2H).
ACL_TIMINGS = ("npu_compute_ms", "h2d_ms", "d2h_ms")


@dataclass
class ScenarioResult:
    metrics: dict[str, float]
    samples_ms: list[float]
    generations: list[GenerationResult] = field(default_factory=list)


def make_inputs(bench: BenchmarkConfig, batch_size: int, vocab_size: int, seed: int,
                tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [batch, seq]: seeded random ids, or the prompt repeated."""
    if bench.input_source == "prompt":
        if tokenizer is None:
            raise ValueError("input_source=prompt needs the tokenizer")
        ids = tokenizer(bench.prompt)["input_ids"]
        if not ids:
            raise ConfigError("benchmark.prompt", bench.prompt, "tokenizes to no tokens; give a non-empty prompt")
        row = np.asarray(ids, dtype=np.int64)
        input_ids = np.repeat(row[None, :], batch_size, axis=0)
    else:
        rng = np.random.default_rng(seed)
        input_ids = rng.integers(0, vocab_size, size=(batch_size, bench.seq_len), dtype=np.int64)
    return input_ids, np.ones_like(input_ids)


def _timed(fn: Callable[[], object], timer, bench: BenchmarkConfig, runtime, device,
           runtime_name: str) -> tuple[list[float], dict[str, float], dict[str, int]]:
    """Warm up, then time; returns (ms samples, memory metrics, runtime-timing offsets after warm-up)."""
    if device is not None:
        device.reset_peak_memory()
    reset_peak_rss()
    measure(fn, timer, warmup=bench.warmup, iterations=0)
    rss_after_warmup = rss_mb()
    offsets = {k: len(v) for k, v in (runtime.timings if runtime is not None else {}).items()}
    with timed_window():  # telemetry: energy counters and a sample at each end, nothing per iteration
        samples = measure(fn, timer, warmup=0, iterations=bench.iterations, min_duration_s=bench.min_duration_s)
    memory = {"host_peak_rss_mb": peak_rss_mb(), "host_rss_growth_mb": rss_mb() - rss_after_warmup}
    peak = device_peak_mb(device, runtime_name) if device is not None else None
    if peak is not None:
        memory["device_peak_mb"] = peak
    return samples, memory, offsets


def runtime_timing_metrics(runtime, offsets: dict[str, int], batch_size: int) -> dict[str, float]:
    """ais_bench figures from a runtime that splits its runs (``AclRuntime.timings``)."""
    timings = runtime.timings if runtime is not None else None
    metrics: dict[str, float] = {}
    if not timings:
        return metrics
    for key in ACL_TIMINGS:
        values = list(timings.get(key, []))[offsets.get(key, 0):]
        if values:
            metrics.update(summarize(values).as_metrics(key, ("mean", "p50", "p99", "min", "max")))
    if "npu_compute_ms_mean" in metrics:
        # ais_bench: throughput = 1000 * batchsize / NPU_compute_time.mean
        metrics["npu_throughput_samples_s"] = per_second(batch_size, metrics["npu_compute_ms_mean"])
    return metrics


def run_forward(fn: Callable[[], object], batch_size: int, seq_len: int, bench: BenchmarkConfig, timer,
                runtime=None, device=None, runtime_name: str = "") -> ScenarioResult:
    samples, memory, offsets = _timed(fn, timer, bench, runtime, device, runtime_name)
    stats = summarize(samples)
    metrics = stats.as_metrics("latency_ms", LATENCY_STATS)
    metrics.update({
        "iterations": stats.count,
        "throughput_samples_s": per_second(batch_size, stats.mean),
        "throughput_tokens_s": per_second(batch_size * seq_len, stats.mean),
        **memory,
        **runtime_timing_metrics(runtime, offsets, batch_size),
    })
    return ScenarioResult(metrics, samples)


def traffic_metrics(engine, input_ids: np.ndarray, attention_mask: np.ndarray, new_tokens: int) -> dict[str, float]:
    """Host↔device bytes and runtime calls of one more (untimed) generation, per decoded token and for
    the prefill, from the engine's counters; {} where the runtime counts none."""
    traffic = engine.traffic
    if traffic is None or new_tokens < 2:
        return {}
    start = traffic.snapshot()
    engine.prefill(input_ids, attention_mask)
    after_prefill = traffic.snapshot()
    for _ in range(new_tokens - 1):
        engine.step()
    end = traffic.snapshot()
    if end["calls"] == start["calls"]:
        return {}
    steps = new_tokens - 1
    metrics = {f"{key}_per_token": (end[key] - after_prefill[key]) / steps
               for key in ("h2d_bytes", "d2h_bytes", "d2d_bytes")}
    metrics["runtime_calls_per_token"] = (end["calls"] - after_prefill["calls"]) / steps
    metrics.update({f"prefill_{key}": float(after_prefill[key] - start[key]) for key in ("h2d_bytes", "d2h_bytes")})
    metrics["prefill_executions"] = float(engine.prefill_executions)
    return metrics


def generation_metrics(results: list[GenerationResult], e2e_ms: list[float], batch_size: int, prompt_len: int,
                       new_tokens: int) -> dict[str, float]:
    """The figures of timed generations: end-to-end time, TTFT (prefill + first token), TPOT (the gaps between
    later tokens), prefill tokens/s, and decode tokens/s = batch × (new − 1) / mean decode time. Also the figures
    of a loop that is not an :class:`~ascend_lab.runtimes.engine.Engine` (``benchmarks/``: HF ``generate``)."""
    e2e = summarize(e2e_ms)
    ttft = summarize([r.ttft_ms for r in results])
    metrics = {
        **e2e.as_metrics("e2e_ms", ("mean", "p50", "p90", "p99", "std")),
        **ttft.as_metrics("ttft_ms", ("mean", "p50", "p90", "p99")),
        "iterations": e2e.count,
        "prefill_tokens_s": per_second(batch_size * prompt_len, ttft.mean),
        "throughput_tokens_s": per_second(batch_size * new_tokens, e2e.mean),
    }
    if new_tokens > 1:
        tpot = summarize([ms for r in results for ms in r.step_ms])
        decode = summarize([r.decode_ms for r in results])
        metrics.update(tpot.as_metrics("tpot_ms", ("mean", "p50", "p90", "p99")))
        metrics["decode_ms_mean"] = decode.mean
        metrics["decode_tokens_s"] = per_second(batch_size * (new_tokens - 1), decode.mean)
    return metrics


def run_generate(engine, input_ids: np.ndarray, attention_mask: np.ndarray, bench: BenchmarkConfig,
                 timer, runtime=None, device=None, runtime_name: str = "") -> ScenarioResult:
    batch_size, prompt_len = input_ids.shape
    new_tokens = bench.new_tokens
    results: list[GenerationResult] = []

    def once() -> None:
        results.append(greedy_generate(engine, input_ids, attention_mask, new_tokens, timer))

    engine.prepare(batch_size, prompt_len, new_tokens)  # one-off work (buffers, compile, capture) untimed
    # Warm-up generations land in `results` too; measure's timed runs are the last len(samples).
    samples, memory, offsets = _timed(once, timer, bench, runtime, device, runtime_name)
    results = results[-len(samples):]
    metrics = {**generation_metrics(results, samples, batch_size, prompt_len, new_tokens), **memory,
               **runtime_timing_metrics(runtime, offsets, batch_size)}
    metrics.update(traffic_metrics(engine, input_ids, attention_mask, new_tokens))
    return ScenarioResult(metrics, samples, results)


__all__ = ["ScenarioResult", "generation_metrics", "make_inputs", "run_forward", "run_generate", "traffic_metrics"]
