"""task=infer: greedy generation from ``benchmark.prompt`` with the configured runtime.

The "it runs" check of the walkthrough's pyACL inference step: prints the prompt and the
``benchmark.new_tokens`` generated tokens (gibberish with random weights), logs the text and the
time to first token and per-token figures of this one generation (no warm-up: first-call costs
included). ``profile=on`` generates once more under the runtime's profiler (:mod:`ascend_lab.profiling`).
"""

from __future__ import annotations

import numpy as np

from ascend_lab.bench.generation import greedy_generate
from ascend_lab.config import AppConfig, check_sequence_fits
from ascend_lab.context import JobContext
from ascend_lab.errors import ConfigError
from ascend_lab.prepare import open_engine
from ascend_lab.stats import per_second, summarize
from ascend_lab.text import display_text, weights_note


def run(cfg: AppConfig, ctx: JobContext) -> str:
    bench = cfg.benchmark
    ctx.tracker.set_tags({"model": cfg.model.name})
    with open_engine(cfg, ctx) as loaded:
        tokenizer = loaded.tokenizer
        ids = tokenizer(bench.prompt)["input_ids"]
        if not ids:
            raise ConfigError("benchmark.prompt", bench.prompt, "tokenizes to no tokens; give a non-empty prompt")
        check_sequence_fits(cfg.model, len(ids) + bench.new_tokens, "benchmark.new_tokens", bench.new_tokens,
                            f"the prompt's {len(ids)} tokens + benchmark.new_tokens")
        input_ids = np.asarray([ids], dtype=np.int64)
        engine = loaded.engine(input_ids.shape[1] + bench.new_tokens)
        engine.prepare(1, input_ids.shape[1], bench.new_tokens)
        result = greedy_generate(engine, input_ids, np.ones_like(input_ids), bench.new_tokens, loaded.timer)
        # profile=on: the same generation once more, under the runtime's profiler, after the measured one.
        profile = loaded.profile(engine, input_ids, np.ones_like(input_ids), scenario="generate") \
            if cfg.profile.enabled else None
    plan = loaded.plan
    text = display_text(tokenizer, result.tokens[0].tolist())
    note = weights_note(cfg.model.weights)
    metrics = {"load_seconds": loaded.load_seconds, "ttft_ms": result.ttft_ms, "prompt_tokens": len(ids),
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
