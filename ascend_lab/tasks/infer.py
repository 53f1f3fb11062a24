"""task=infer: greedy generation from ``benchmark.prompt`` with the configured runtime.

The "it runs" check of the walkthrough's pyACL inference step: prints the prompt and the
``benchmark.new_tokens`` generated tokens (gibberish with random weights), logs the text and the
time to first token and per-token figures of this one generation (no warm-up: first-call costs
included). ``profile=on`` generates once more under the runtime's profiler (:mod:`ascend_lab.profiling`).
"""

from __future__ import annotations

import time

import numpy as np

from ascend_lab.bench.generation import greedy_generate
from ascend_lab.bench.stats import per_second, summarize
from ascend_lab.config import AppConfig, check_sequence_fits
from ascend_lab.context import JobContext
from ascend_lab.errors import ConfigError
from ascend_lab.prepare import plan_runtime
from ascend_lab.runtimes.select import open_runtime, tokenizer_for
from ascend_lab.tasks.bench import engine_for, load_figures, profiled_pass, timer_for
from ascend_lab.text import display_text, weights_note


def run(cfg: AppConfig, ctx: JobContext) -> str:
    bench = cfg.benchmark
    plan = plan_runtime(cfg, ctx)
    ctx.tracker.set_tags({**plan.tags(), "model": cfg.model.name})
    started = time.perf_counter()
    runtime = open_runtime(plan, cfg, ctx.device_for(plan.name))
    load_seconds = time.perf_counter() - started
    with runtime:
        tokenizer = tokenizer_for(cfg, runtime)
        ids = tokenizer(bench.prompt)["input_ids"]
        if not ids:
            raise ConfigError("benchmark.prompt", bench.prompt, "tokenizes to no tokens; give a non-empty prompt")
        check_sequence_fits(cfg.model, len(ids) + bench.new_tokens, "benchmark.new_tokens", bench.new_tokens,
                            f"the prompt's {len(ids)} tokens + benchmark.new_tokens")
        input_ids = np.asarray([ids], dtype=np.int64)
        engine = engine_for(runtime, cfg, input_ids.shape[1] + bench.new_tokens, ctx.tracker)
        engine.prepare(1, input_ids.shape[1], bench.new_tokens)
        timer = timer_for(plan.name, ctx.device)
        result = greedy_generate(engine, input_ids, np.ones_like(input_ids), bench.new_tokens, timer)
        # profile=on: the same generation once more, under the runtime's profiler, after the measured one.
        profile = profiled_pass(cfg, ctx, runtime, engine, input_ids, np.ones_like(input_ids), timer,
                                scenario="generate") if cfg.profile.enabled else None
    text = display_text(tokenizer, result.tokens[0].tolist())
    note = weights_note(cfg.model.weights)
    metrics = {"load_seconds": load_seconds, **load_figures(runtime), "ttft_ms": result.ttft_ms, "prompt_tokens": len(ids),
               "new_tokens": bench.new_tokens}
    if result.step_ms:
        metrics.update(summarize(result.step_ms).as_metrics("tpot_ms", ("mean", "p50", "p99")))
        metrics["decode_tokens_s"] = per_second(len(result.step_ms), result.decode_ms)
    ctx.tracker.log_metrics(metrics)
    ctx.tracker.log_text(f"prompt: {bench.prompt}\ngenerated: {text}\n", "generated_text.txt")
    ctx.tracker.log_dict({"prompt_ids": ids, "generated_ids": result.tokens[0].tolist()}, "generated_ids.json")
    print(f"runtime: {plan.name} ({plan.reason})")
    if note:
        print(note)
    print(f"prompt:    {bench.prompt}")
    print(f"generated: {text}")
    print(f"ttft {result.ttft_ms:.2f} ms"
          + (f", {metrics['tpot_ms_mean']:.2f} ms/token, {metrics['decode_tokens_s']:.1f} tokens/s decode"
             if result.step_ms else ""))
    if profile is not None:
        print(profile.log(ctx.tracker, cfg.profile.top_n, f"profile: infer {cfg.model.name} on {plan.name}"))
    return text
