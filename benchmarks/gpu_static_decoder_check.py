#!/usr/bin/env python
"""Decode throughput of Qwen1.5-1.8B shapes (random weights, bf16) on one GPU: Hugging Face
``generate`` against :class:`ascend_lab.runtimes.torch.static_decoder.StaticDecoderEngine` eager, with
the decode step captured as a CUDA graph, and compiled + captured; beside the bandwidth roofline.

Run once on a lent H100/H200 (no network needed; needs only torch and transformers — this script
and the engine import nothing that pulls Hydra, OmegaConf or MLflow)::

    python benchmarks/gpu_static_decoder_check.py --json $OUT/static_decoder.json   # ≈ 3–5 min
    python benchmarks/gpu_static_decoder_check.py --quick                          # batch 1, 32 tokens
    python benchmarks/gpu_static_decoder_check.py --tiny --device cpu              # smoke test, seconds

Method (the H200 anchor run's, ``benchmarks/README.md``): prompt 32 random tokens, 128 new tokens,
greedy, exactly that many tokens per row. Decode tokens/s = batch × (new − 1) / decode time; for the
engines the decode time is the device-event time of the ``new − 1`` steps after prefill, for HF
``generate`` the time from its first logits-processor call (prefill done) to its return.
Roofline: ascend_lab's one definition (:mod:`ascend_lab.bench.roofline`, what ``task=bench`` logs): the device's
read bandwidth (torch ``sum``/``amax`` over a ≥ 1 GB float32 tensor) over the bytes a decode step reads, the
weights (every parameter once) plus the KV cache at each step's length; roofline tokens/s = batch × bandwidth /
bytes per step, per batch.
Token agreement compares each variant's tokens with the engine's eager tokens (graph capture alone
must agree exactly; compiled kernels round differently in bf16, so random weights may drift late).

Compilation and capture happen in ``prepare`` (reported as setup seconds, not in tokens/s). The
layer-scope compile (one compiled decoder layer reused by all 24) runs at every batch; the
whole-step compile (cross-layer fusion, slower to build) at batch 1 only and last. A time budget
(``--budget-s``, default 330 s) skips compiled variants that would not finish in time, a hard stop
15 s after it interrupts whatever runs, and the JSON is rewritten after every measurement, so a
cut-off run still leaves its numbers and the table.

The timing here is a few lines of CUDA events on purpose: ``ascend_lab.device`` imports the
config package (Hydra), which the GPU machine does not have.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # a plain checkout, not installed

QWEN1_5_1_8B = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 24,
                "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 32768,
                "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
TINY = {"vocab_size": 384, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, "rope_theta": 10_000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
VARIANTS = ("hf", "eager", "graph", "compile_graph", "compile_step_graph")
ENGINE_OPTIONS = {  # variant -> StaticDecoderEngine options
    "eager": {"graph_capture": False, "compile": False},
    "graph": {"graph_capture": True, "compile": False},
    "compile_graph": {"graph_capture": True, "compile": True, "compile_scope": "layer"},
    "compile_step_graph": {"graph_capture": True, "compile": True, "compile_scope": "step"},
}
# The whole-step compile (24 layers in one graph) is the slowest to build: measured at batch 1 only.
STEP_SCOPE_BATCHES = (1,)
FIRST_COMPILE_GUESS_S = {"compile_graph": 60.0, "compile_step_graph": 150.0}
# Past --budget-s plus this, whatever is running is interrupted (see Deadline).
HARD_LIMIT_MARGIN_S = 15.0


def say(*parts) -> None:
    print(*parts, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 1 only, 32 new tokens, no whole-step compile")
    p.add_argument("--tiny", action="store_true",
                   help="a 2-layer model, batches 1,4, 32 new tokens (smoke test of the script)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"),
                   help="default bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,4,8; quick: 1; tiny: 1,4)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=None, help="default 128 (quick, tiny: 32)")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--reps", type=int, default=3, help="timed generations per variant (median reported)")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode (default: inductor's default; e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="skip compiled variants that would end past this many seconds from the start; "
                        f"whatever runs {HARD_LIMIT_MARGIN_S:.0f}s past it is interrupted")
    p.add_argument("--bandwidth-gb", type=float, default=2.0, help="array the bandwidth is read over (GB, ≥ 1)")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    default_batches = "1" if args.quick else "1,4" if args.tiny else "1,4,8"
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    args.new_tokens = args.new_tokens or (32 if args.quick or args.tiny else 128)
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    if args.quick and not args.variants:
        variants.remove("compile_step_graph")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    args.variants = variants
    if args.new_tokens < 2:
        p.error("--new-tokens must be ≥ 2 (decode time is measured over new_tokens - 1 steps)")
    return args


class Clock:
    """Device-event time on a GPU, host time on the CPU; seconds."""

    def __init__(self, torch, device) -> None:
        self.torch, self.device = torch, device
        self.gpu = device.type == "cuda"

    def sync(self) -> None:
        if self.gpu:
            self.torch.cuda.synchronize(self.device)

    def mark(self):
        """A point on the device timeline (a recorded event), or the host clock (the CPU is synchronous)."""
        if self.gpu:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.gpu:
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return end - start

    def time(self, fn) -> float:
        self.sync()
        start = self.mark()
        fn()
        return self.seconds(start, self.mark())


def build_model(torch, figures: dict, dtype, device, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**figures, use_sliding_window=False, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    rope = getattr(config, "rope_parameters", None)  # transformers 5 keeps rope_theta in here
    if isinstance(rope, dict) and rope.get("rope_theta") != figures["rope_theta"]:
        rope["rope_theta"] = figures["rope_theta"]
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: seconds instead of minutes for 1.8B
        model = Qwen2ForCausalLM(config)
    # Exactly new_tokens per row, like the engines: no end-of-sequence token (min_new_tokens
    # would otherwise forbid one the engines may pick).
    model.generation_config.eos_token_id = None
    return model.to(dtype=dtype).eval()


def hf_decode(torch, model, clock: Clock, ids, mask, new_tokens: int, reps: int):
    """(median decode seconds, tokens [b, new]) of HF generate, greedy, exactly new_tokens.

    Decode starts where generate first hands logits to a logits processor (prefill done, as
    optimum-benchmark stamps it) and ends when generate returns: new_tokens - 1 forward passes."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class MarkFirstScores(LogitsProcessor):
        def __init__(self) -> None:
            self.mark = None

        def __call__(self, input_ids, scores):
            if self.mark is None:
                self.mark = clock.mark()
            return scores

    def generate(n, processors=()):
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=model.config.pad_token_id,
                              logits_processor=LogitsProcessorList(processors))

    decodes, out = [], None
    with torch.no_grad():
        generate(4)  # warm-up
        for _ in range(reps):
            first = MarkFirstScores()
            clock.sync()
            out = generate(new_tokens, [first])
            decodes.append(clock.seconds(first.mark, clock.mark()))
    return statistics.median(decodes), out[:, ids.shape[1]:].cpu().numpy()


def engine_decode(engine, clock: Clock, ids_np, mask_np, new_tokens: int, reps: int):
    """(median decode seconds of the new_tokens - 1 steps, tokens) of a static decoder engine."""
    times, tokens = [], None

    def steps():
        for _ in range(new_tokens - 1):
            engine.step()

    for _ in range(reps + 1):  # the first run is a warm-up
        engine.prefill(ids_np, mask_np)
        clock.sync()
        times.append(clock.time(steps))
        tokens = engine.generated()
    return statistics.median(times[1:]), tokens


def agreement(tokens, reference) -> tuple[float, int | None]:
    """(fraction of equal tokens, first step where any row differs or None)."""
    import numpy as np

    equal = tokens == reference
    bad_steps = np.nonzero(~equal.all(axis=0))[0]
    return float(equal.mean()), (int(bad_steps[0]) if len(bad_steps) else None)


def compare(results: list[dict], tokens: dict) -> None:
    """Add vs_hf (throughput ratio) and token agreement with the eager engine to every row."""
    by_key = {(r["batch"], r["variant"]): r for r in results if "error" not in r}
    for (batch, variant), row in by_key.items():
        hf = by_key.get((batch, "hf"))
        if hf is not None:
            row["vs_hf"] = row["tok_s"] / hf["tok_s"]
        if (batch, "eager") in tokens:
            row["agree_vs_eager"], row["first_divergence"] = agreement(tokens[(batch, variant)],
                                                                       tokens[(batch, "eager")])


class Deadline:
    """A hard stop (SIGALRM, POSIX main thread): the running variant fails with TimeoutError and
    the rest are skipped, so the table and the JSON still come out in time."""

    def __init__(self, seconds_from_now: float) -> None:
        self.at = time.perf_counter() + seconds_from_now
        self.usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()

    @property
    def passed(self) -> bool:
        return time.perf_counter() >= self.at

    @contextmanager
    def armed(self):
        if not self.usable:
            yield
            return

        def expire(signum, frame):
            raise TimeoutError("hard time limit reached (--budget-s + margin)")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.at - time.perf_counter(), 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    import numpy as np
    import torch
    import transformers

    from ascend_lab.bench import roofline
    from ascend_lab.graph_contract import GraphContract, ModelDims
    from ascend_lab.runtimes.torch.static_decoder import StaticDecoderEngine

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu and not torch.cuda.is_available():
        say("no CUDA device visible; use --device cpu (with --tiny) for a smoke test")
        return 2
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    figures = TINY if args.tiny else QWEN1_5_1_8B
    clock = Clock(torch, device)
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
           "dtype": str(dtype).removeprefix("torch."), "model": "tiny" if args.tiny else "qwen1.5-1.8b-shapes",
           "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batches": args.batches,
           "variants": args.variants, "compile_mode": args.compile_mode}
    say("env:", json.dumps(env))
    report = {"env": env, "notes": [], "results": []}

    def save() -> None:
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(report, indent=2))

    def note(text: str) -> None:
        report["notes"].append(text)
        say("note:", text)

    t0 = time.perf_counter()
    model = build_model(torch, figures, dtype, device, args.seed)
    wbytes = roofline.parameter_bytes(model.parameters())
    rope = getattr(model.config, "rope_parameters", None) or {}
    env.update(rope_theta=rope.get("rope_theta", getattr(model.config, "rope_theta", None)),
               hf_attention=model.config._attn_implementation)
    say(f"model built in {time.perf_counter() - t0:.1f}s: {wbytes / 1e9:.3f} GB of weights, "
        f"attention {env['hf_attention']}, rope theta {env['rope_theta']}")
    bandwidth = roofline.measure_torch_read_bandwidth(device, max(args.bandwidth_gb, 1.0) if on_gpu else 0.05)
    dims = ModelDims(figures["num_hidden_layers"], figures["num_attention_heads"], figures["num_key_value_heads"],
                     figures["hidden_size"] // figures["num_attention_heads"], figures["hidden_size"],
                     figures["vocab_size"])
    contract = GraphContract("kv_cache", dims, env["dtype"])

    def roofline_tok_s(batch: int) -> float:
        step_bytes = roofline.decode_step_bytes(wbytes, roofline.cache_position_bytes(contract, batch),
                                                args.prompt_len, args.new_tokens)
        return roofline.roofline_tokens_s(batch, bandwidth.gb_s, step_bytes)

    report.update(weight_bytes=wbytes, bandwidth=bandwidth.as_dict(),
                  roofline_tok_s={batch: roofline_tok_s(batch) for batch in args.batches})
    say(f"{bandwidth.describe()} → roofline {roofline_tok_s(1):.1f} tok/s at batch 1")
    save()

    gen = np.random.default_rng(args.seed)
    prompts = {}
    for batch in args.batches:
        ids_np = gen.integers(0, figures["vocab_size"], size=(batch, args.prompt_len)).astype(np.int64)
        prompts[batch] = (ids_np, np.ones_like(ids_np))
    # Every batch's main variants first; the slow whole-step compile last, so that running out of
    # time costs only that extra row.
    plan = [(b, v) for b in args.batches for v in args.variants if v != "compile_step_graph"]
    plan += [(b, "compile_step_graph") for b in args.batches
             if "compile_step_graph" in args.variants and b in STEP_SCOPE_BATCHES]
    deadline = Deadline(args.budget_s + HARD_LIMIT_MARGIN_S)
    compile_cost: dict[str, float] = {}
    tokens: dict[tuple[int, str], object] = {}
    for batch, variant in plan:
        options = ENGINE_OPTIONS.get(variant, {})
        left = args.budget_s - (time.perf_counter() - started)
        if deadline.passed:
            note(f"{variant} at batch {batch} skipped: past the hard time limit")
            continue
        if options.get("compile"):
            if not on_gpu:
                note(f"{variant} at batch {batch} skipped on {device.type} (the smoke test checks the script, "
                     "not inductor)")
                continue
            guess = compile_cost.get(variant) or max(FIRST_COMPILE_GUESS_S[variant],
                                                      2 * compile_cost.get("compile_graph", 0.0))
            if guess + 10 > left:
                note(f"{variant} at batch {batch} skipped: about {guess + 10:.0f}s needed, {left:.0f}s of "
                     "--budget-s left")
                continue
        if options.get("graph_capture") and not on_gpu:
            note(f"{variant} at batch {batch} on {device.type}: no graph capture there, the engine runs the step "
                 "eagerly")
        say(f"[{time.perf_counter() - started:6.1f}s] batch {batch}: {variant} ...")
        row = {"batch": batch, "variant": variant}
        ids_np, mask_np = prompts[batch]
        try:
            with deadline.armed():
                if variant == "hf":
                    ids, mask = torch.from_numpy(ids_np).to(device), torch.from_numpy(mask_np).to(device)
                    decode_s, out = hf_decode(torch, model, clock, ids, mask, args.new_tokens, max(1, args.reps - 1))
                    row["setup_s"] = 0.0
                else:
                    engine = StaticDecoderEngine(model, device, max_len=args.prompt_len + args.new_tokens,
                                                 compile_mode=args.compile_mode, **options)
                    t_setup = time.perf_counter()
                    engine.prepare(batch, args.prompt_len, args.new_tokens)
                    clock.sync()
                    row["setup_s"] = round(time.perf_counter() - t_setup, 2)
                    if options.get("compile"):
                        compile_cost[variant] = row["setup_s"]
                    reps = args.reps if variant != "eager" else max(1, args.reps - 1)
                    decode_s, out = engine_decode(engine, clock, ids_np, mask_np, args.new_tokens, reps)
                    row["engine_notes"] = engine.notes
                    del engine
        except Exception as exc:  # noqa: BLE001  one failing variant must not lose the others' numbers
            row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            say(f"  FAILED: {row['error']}")
            report["results"].append(row)
            save()
            continue
        tok_s = batch * (args.new_tokens - 1) / decode_s
        row.update(decode_s=decode_s, tok_s=tok_s, step_ms=1e3 * decode_s / (args.new_tokens - 1),
                   frac_roofline=tok_s / roofline_tok_s(batch))
        tokens[(batch, variant)] = out
        say(f"  {tok_s:9.1f} tok/s  {row['step_ms']:.3f} ms/step  setup {row['setup_s']}s  "
            f"{100 * row['frac_roofline']:.1f}% of roofline")
        report["results"].append(row)
        save()
    compare(report["results"], tokens)
    print_table(report)
    save()
    say(f"done in {report['elapsed_s']}s" + (f"; results in {args.json_out}" if args.json_out else ""))
    return 0


def print_table(report: dict) -> None:
    from ascend_lab.report import format_table

    headers = ["batch", "variant", "tok/s", "ms/step", "vs HF", "% roofline", "agree", "setup s"]
    rows = []
    for r in report["results"]:
        if "error" in r:
            rows.append([r["batch"], r["variant"], "error", "", "", "", "", ""])
            continue
        agree = r.get("agree_vs_eager")
        rows.append([r["batch"], r["variant"], f"{r['tok_s']:.1f}", f"{r['step_ms']:.3f}",
                     f"{r['vs_hf']:.2f}x" if "vs_hf" in r else "", f"{100 * r['frac_roofline']:.2f}",
                     "" if agree is None else f"{100 * agree:.1f}%", f"{r['setup_s']}"])
    say("\n" + format_table(headers, rows))
    say(f"roofline: {report['bandwidth']['read_gb_s']:.1f} GB/s read over {report['weight_bytes'] / 1e9:.3f} GB of "
        "weights + the KV cache: " + ", ".join(f"{v:.1f} tok/s at batch {b}" for b, v in report["roofline_tok_s"].items()))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
