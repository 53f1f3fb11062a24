"""task=bench: measure one configuration (runtime × model × batch size × scenario).

Prepares what the runtime loads (export and, where ``atc`` exists, compile, through their
caches), loads it (``load_seconds``), runs the scenario and logs every figure, the artifact it
measured (``onnx_sha256`` / ``om_sha256``) and the runtime chosen with its reason.
Sweep it with ``-m``: ``python -m ascend_lab.run -m task=bench benchmark.batch_size=1,4,8``.
"""

from __future__ import annotations

import logging
import time

from ascend_lab.bench.scenarios import make_inputs, run_forward, run_generate
from ascend_lab.bench.summary import Row, figure_text
from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.errors import ConfigError
from ascend_lab.prepare import plan_runtime
from ascend_lab.report import format_table
from ascend_lab.runtimes.select import open_runtime, tokenizer_for

log = logging.getLogger(__name__)

# Figures shown on the console after a run (all of them are logged).
SHOWN = ("latency_ms_mean", "latency_ms_p50", "latency_ms_p99", "throughput_samples_s", "throughput_tokens_s",
         "ttft_ms_mean", "tpot_ms_mean", "tpot_ms_p99", "decode_tokens_s", "e2e_ms_mean", "npu_compute_ms_mean",
         "h2d_ms_mean", "d2h_ms_mean", "npu_throughput_samples_s", "h2d_bytes_per_token", "d2h_bytes_per_token",
         "d2d_bytes_per_token", "runtime_calls_per_token", "prefill_executions", "host_peak_rss_mb",
         "host_rss_growth_mb", "device_peak_mb", "load_seconds", "iterations")


def timer_for(runtime_name: str, device):
    """Device events (or a synchronised host clock) for torch; the host clock for runtimes whose
    calls return when the work is done (onnxruntime, pyACL)."""
    return device.timer if runtime_name == "torch" else device.host_timer


def engine_for(runtime, cfg: AppConfig, max_tokens: int, tracker):
    """The runtime's generation engine, its kind and notes recorded as tags."""
    engine = runtime.engine(max_tokens, tuple(cfg.export.prefill_chunks), cfg.export.kv_capacity)
    tracker.set_tags({"engine": type(engine).__name__,
                      **({"engine.notes": "; ".join(engine.notes)} if engine.notes else {})})
    return engine


def run(cfg: AppConfig, ctx: JobContext) -> Row:
    bench = cfg.benchmark
    _require_inputs_fit(bench)
    plan = plan_runtime(cfg, ctx)
    ctx.tracker.set_tags({**plan.tags(), "model": cfg.model.name, "batch_size": bench.batch_size,
                          "scenario": bench.scenario})
    log.info("runtime %s (%s)", plan.name, plan.reason)
    device = ctx.device
    started = time.perf_counter()
    runtime = open_runtime(plan, cfg, device)
    load_seconds = time.perf_counter() - started
    with runtime:
        tokenizer = tokenizer_for(cfg, runtime) if bench.input_source == "prompt" else None
        input_ids, attention_mask = make_inputs(bench, bench.batch_size, runtime.contract.dims.vocab_size, cfg.seed,
                                                tokenizer)
        timer = timer_for(plan.name, device)
        prompt_len = input_ids.shape[1]
        if bench.scenario == "generate":
            engine = engine_for(runtime, cfg, prompt_len + bench.new_tokens, ctx.tracker)
            result = run_generate(engine, input_ids, attention_mask, bench, timer, runtime, device, plan.name)
        elif runtime.contract.graph == "kv_cache":  # this graph's forward pass is the prompt's prefill
            engine = engine_for(runtime, cfg, prompt_len + 1, ctx.tracker)
            engine.prepare(bench.batch_size, prompt_len, 1)
            result = run_forward(lambda: engine.prefill(input_ids, attention_mask), bench.batch_size, prompt_len,
                                 bench, timer, runtime, device, plan.name)
        else:
            fn = runtime.bind({"input_ids": input_ids, "attention_mask": attention_mask})
            result = run_forward(fn, bench.batch_size, prompt_len, bench, timer, runtime, device, plan.name)
    metrics = {**result.metrics, "load_seconds": load_seconds, "prepare_seconds": plan.prepare_seconds,
               "seq_len": float(input_ids.shape[1])}
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_dict({"scenario": bench.scenario, "samples_ms": result.samples_ms}, "latency_samples.json")
    title = (f"bench: {cfg.model.name} on {plan.name} ({device.torch_device}), {bench.scenario}, "
             f"batch {bench.batch_size}, seq {input_ids.shape[1]}"
             + (f", {bench.new_tokens} new tokens" if bench.scenario == "generate" else ""))
    print(format_table(["metric", "value"], [(k, figure_text(metrics[k])) for k in SHOWN if k in metrics], title=title))
    return Row(batch_size=bench.batch_size, runtime=plan.name, scenario=bench.scenario, model=cfg.model.name,
               metrics=metrics)


def _require_inputs_fit(bench) -> None:
    """A batch whose int64 ids and mask alone exceed host memory fails here, not in numpy."""
    import psutil

    need = 2 * bench.batch_size * bench.seq_len * 8
    total = psutil.virtual_memory().total
    if need > total:
        raise ConfigError("benchmark.batch_size", bench.batch_size, (
            f"the [{bench.batch_size}, {bench.seq_len}] input ids and mask alone need {need / 2**30:,.0f} GiB, more "
            f"than this host's {total / 2**30:,.0f} GiB; use a smaller benchmark.batch_size or benchmark.seq_len"))
