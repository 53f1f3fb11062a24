#!/usr/bin/env python
"""Decode speed of ascend_lab's onnxruntime paths against Hugging Face ``generate``, beside the
memory-bandwidth roofline, plus the runner's own overhead; one run, one model, one set of prompts.

    python benchmarks/decode_vs_hf.py                      # CPU: Qwen2.5-0.5B shapes, random weights, fp32
    python benchmarks/decode_vs_hf.py --quick              # batch 1 only, fewer tokens
    python benchmarks/decode_vs_hf.py --tiny --no-track    # smoke test on tiny_qwen (seconds)
    python benchmarks/decode_vs_hf.py --device cuda        # Qwen1.5-1.8B shapes, bf16 (onnxruntime-gpu rows)

Rows (``--rows``): ``hf`` Hugging Face ``generate`` (eager attention, default dynamic cache, greedy,
``min_new_tokens = max_new_tokens``); ``ort_feeds`` the plain numpy-feeds loop over the exported
graph (:class:`~ascend_lab.bench.generation.FeedsEngine`); ``ort`` the I/O-binding engine
(:class:`~ascend_lab.runtimes.ort_engine.OrtEngine`, KV cache kept as OrtValues, intra-op threads =
physical cores); ``ort_opt`` the same on the transformer-optimised graph; ``ort_int8_<method>`` the
same on the int8 graph (:mod:`ascend_lab.export.quantize`). The float graph comes from the export
cache (``ensure_exported``); the optimised and int8 graphs are derived from it and cached beside it
(``export.quantize=int8`` runs the same quantiser on the same export).

Method: the same seeded random prompts (``--prompt-len`` tokens) for every row; warm-up generations,
then ``--reps`` timed ones, median reported. TTFT = prefill + first token; per-token latency = the
median gap between later tokens; decode tokens/s = batch × (new − 1) / decode time (the new − 1
steps after the first token). HF's times come from a streamer stamping each token as ``generate``
hands it out (it syncs the device for it). Roofline: every decode step reads every weight once
(KV-cache reads, a few MB here, are left out), so roofline tokens/s = batch × read bandwidth /
weight bytes per step, with the read bandwidth measured in this run by summing a ≥ 1 GB float32
array (bytes read / time; best of one thread and one thread per physical core, median of repeats).
Weight bytes per step count every constant except tables read only by ``Gather`` (the embedding
lookup reads one row per token; a tied LM head still reads the whole table).

Runner overhead: a 3-point sweep ``python -m ascend_lab.run -m task=bench benchmark.batch_size=1,4,8
...`` (generate scenario, same model, tracked as usual) against the same work done by a plain Python
loop in a fresh interpreter (load the session, same engine, same scenario function, per batch);
and ``python -m ascend_lab.run --help`` wall time.

Results are printed and logged to MLflow (experiment ``ascend_lab_benchmarks``, store
``sqlite:///outputs/mlflow.db`` under ``--launch-dir``) unless ``--no-track``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a plain checkout works too

log = logging.getLogger("decode_vs_hf")

CPU_MODEL = ["model=qwen2_5_0_5b_instruct", "model.weights=random", "model.dtype=float32"]
GPU_MODEL = ["model=qwen1_5_1_8b_chat", "model.weights=random", "model.dtype=bfloat16"]
TINY_MODEL = ["model=tiny_qwen"]
DEFAULT_ROWS = "hf,ort_feeds,ort,ort_opt,ort_int8"
INT8_METHODS = ("matmul_nbits", "dynamic")
# Targets of the issue this script answers (CPU, batch 1 unless said).
TARGETS = {"ort_roofline_fraction": 0.85, "ort_vs_hf": 2.0, "ort_b8_vs_b1": 5.0, "int8_vs_hf": 3.0,
           "int8_agreement": 0.90, "runner_overhead": 1.15, "help_seconds": 2.0}


# ---------------------------------------------------------------------------------------------
# Arguments and config


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--overrides", nargs="*", default=None,
                   help="Hydra overrides naming the model (default: Qwen2.5-0.5B shapes fp32 on cpu, "
                        "Qwen1.5-1.8B shapes bf16 on cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny_qwen, batches 1,4, 8 new tokens: a smoke test")
    p.add_argument("--quick", action="store_true", help="batch 1 only, 32 new tokens, one rep, no overhead part")
    p.add_argument("--batches", default=None, help="comma-separated (default 1,4,8)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=None, help="default 64 on cpu, 128 on cuda")
    p.add_argument("--warmup", type=int, default=1, help="untimed generations per row and batch")
    p.add_argument("--reps", type=int, default=3, help="timed generations per row and batch (median)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated subset of {DEFAULT_ROWS}")
    p.add_argument("--int8-methods", default=",".join(INT8_METHODS), help="for the ort_int8 row(s)")
    p.add_argument("--agreement-prompts", type=int, default=8)
    p.add_argument("--agreement-tokens", type=int, default=32)
    p.add_argument("--bandwidth-gb", type=float, default=2.0, help="size of the bandwidth array (≥ 1)")
    p.add_argument("--skip-overhead", action="store_true", help="skip the runner-overhead measurement")
    p.add_argument("--overhead-new-tokens", type=int, default=16)
    p.add_argument("--overhead-iterations", type=int, default=3)
    p.add_argument("--launch-dir", default=None,
                   help="where the export cache and the MLflow store live (default: the current directory)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db")
    p.add_argument("--experiment", default="ascend_lab_benchmarks")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-loop", default=None, help=argparse.SUPPRESS)  # internal: the overhead baseline
    args = p.parse_args(argv)
    if args.overrides is None:
        args.overrides = TINY_MODEL if args.tiny else GPU_MODEL if args.device == "cuda" else CPU_MODEL
    default_batches = "1" if args.quick else "1,4" if args.tiny else "1,4,8"
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    args.new_tokens = args.new_tokens or (8 if args.tiny else 32 if args.quick else
                                          128 if args.device == "cuda" else 64)
    if args.quick:
        args.reps, args.skip_overhead = 1, True
    args.rows = [r for r in args.rows.split(",") if r]
    args.int8_methods = [m for m in args.int8_methods.split(",") if m]
    unknown = set(args.rows) - set(DEFAULT_ROWS.split(",")) | set(args.int8_methods) - set(INT8_METHODS)
    if unknown:
        p.error(f"unknown rows or int8 methods: {sorted(unknown)}")
    if args.new_tokens < 2:
        p.error("--new-tokens must be ≥ 2 (decode is timed over new_tokens - 1 steps)")
    args.launch_dir = Path(args.launch_dir or os.getcwd()).resolve()
    return args


def compose(launch_dir: Path, overrides: list[str], device: str):
    """The validated AppConfig and a JobContext (no tracking: this script logs its own run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ascend_lab.config import register_configs, validate
    from ascend_lab.context import JobContext
    from ascend_lab.tracking import Tracker

    conf_dir = REPO / "conf" if (REPO / "conf" / "config.yaml").is_file() else None
    if conf_dir is None:
        import ascend_lab.conf as packaged  # an installed wheel keeps conf/ as a package

        conf_dir = Path(packaged.__file__).parent
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = validate(hydra_compose(config_name="config",
                                     overrides=["tracking=off", f"device={device}", "runtime=onnxruntime",
                                                "export.graph=kv_cache", *overrides]))
    return cfg, JobContext(cfg, Tracker(), launch_dir, launch_dir)


# ---------------------------------------------------------------------------------------------
# Measurements


@dataclasses.dataclass
class Figure:
    row: str
    batch: int
    ttft_ms: float
    tpot_ms: float
    decode_tokens_s: float
    step_bytes: int
    reps: int

    def roofline_tokens_s(self, read_gb_s: float) -> float:
        return self.batch * read_gb_s * 1e9 / self.step_bytes

    def roofline_fraction(self, read_gb_s: float) -> float:
        return self.decode_tokens_s / self.roofline_tokens_s(read_gb_s)


def read_bandwidth(gb: float, repeats: int = 5) -> dict:
    """Host memory bandwidth, GB/s: reads (a reduction over a ≥ 1 GB float32 array: bytes read /
    time) and copies (bytes read + written / time).

    Two reductions (a sum is compute-bound on one core before it is memory-bound; a max is
    cheaper per byte), each on one thread and on one thread per physical core; the read bandwidth
    is the best of their medians: the roofline is the most this machine was seen to read.
    """
    from ascend_lab.runtimes.ort_engine import physical_cores

    n = int(max(gb, 1.0) * 1e9) // 4
    data = np.ones(n, dtype=np.float32)  # written once: every page is resident before timing
    cores = physical_cores()
    results = {"bandwidth_array_gb": n * 4 / 1e9, "physical_cores": cores}
    with ThreadPoolExecutor(max_workers=cores) as pool:
        for name, kernel in (("sum", np.add.reduce), ("max", np.maximum.reduce)):  # both release the GIL
            for threads in sorted({1, cores}):
                chunks = np.array_split(data, threads)
                times = []
                for _ in range(repeats + 1):
                    started = time.perf_counter()
                    list(pool.map(kernel, chunks))
                    times.append(time.perf_counter() - started)
                results[f"read_gb_s_{name}_{threads}t"] = n * 4 / statistics.median(times[1:]) / 1e9
    target = np.empty_like(data)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        np.copyto(target, data)
        times.append(time.perf_counter() - started)
    results["copy_rw_gb_s"] = 2 * n * 4 / statistics.median(times) / 1e9  # bytes read + written
    results["read_gb_s"] = max(v for k, v in results.items() if k.startswith("read_gb_s_"))
    del data, target
    gc.collect()
    return results


def aggregate(row: str, batch: int, generations, step_bytes: int) -> Figure:
    from ascend_lab.bench.stats import summarize

    decode = summarize([g.decode_ms for g in generations])
    steps = len(generations[0].step_ms)
    return Figure(row, batch,
                  ttft_ms=summarize([g.ttft_ms for g in generations]).p50,
                  tpot_ms=summarize([statistics.median(g.step_ms) for g in generations]).p50,
                  decode_tokens_s=batch * steps / (decode.p50 / 1e3),
                  step_bytes=step_bytes, reps=len(generations))


def time_engine(engine, inputs: dict, args) -> dict[int, list]:
    """Per batch: the timed GenerationResults of ``engine`` (after warm-up)."""
    from ascend_lab.bench.generation import greedy_generate
    from ascend_lab.device import HostTimer

    out = {}
    for batch, (ids, mask) in inputs.items():
        runs = [greedy_generate(engine, ids, mask, args.new_tokens, HostTimer)
                for _ in range(args.warmup + args.reps)]
        out[batch] = runs[args.warmup:]
    return out


class TokenClock:
    """A ``generate`` streamer that stamps the time each new token is handed out."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first passes the prompt itself
            self._prompt_seen = True
            return
        self.stamps.append(time.perf_counter())

    def end(self) -> None: ...


def hf_generations(cfg, args, inputs: dict, agree_ids: np.ndarray,
                   torch_device) -> tuple[dict[int, list], int, np.ndarray]:
    """Hugging Face eager generate: per batch the timed results; the weight bytes; the greedy
    tokens on the agreement prompts (the reference the exported graph must reproduce)."""
    import torch

    from ascend_lab.bench.generation import GenerationResult
    from ascend_lab.models import load_model

    loaded = load_model(cfg.model, cfg.seed, device=torch_device)
    model = loaded.model
    # Every parameter once (a tied LM head is the embedding table, read whole by the LM head).
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    pad = loaded.tokenizer.pad_token_id
    out = {}
    for batch, (ids, mask) in inputs.items():
        ids_t = torch.from_numpy(ids).to(torch_device)
        mask_t = torch.from_numpy(mask).to(torch_device)
        runs = []
        for _ in range(args.warmup + args.reps):
            clock = TokenClock()
            if torch_device.type == "cuda":
                torch.cuda.synchronize(torch_device)
            started = time.perf_counter()
            with torch.inference_mode():
                generated = model.generate(input_ids=ids_t, attention_mask=mask_t, max_new_tokens=args.new_tokens,
                                           min_new_tokens=args.new_tokens, do_sample=False, num_beams=1,
                                           streamer=clock, pad_token_id=pad)
            stamps = [started, *clock.stamps]
            gaps = [(b - a) * 1e3 for a, b in itertools.pairwise(stamps[1:])]
            runs.append(GenerationResult(generated[:, ids.shape[1]:].cpu().numpy(), (stamps[1] - started) * 1e3, gaps))
        out[batch] = runs[args.warmup:]
    with torch.inference_mode():
        ids_t = torch.from_numpy(agree_ids).to(torch_device)
        generated = model.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                                   max_new_tokens=args.agreement_tokens, min_new_tokens=args.agreement_tokens,
                                   do_sample=False, num_beams=1, pad_token_id=pad)
    tokens = generated[:, agree_ids.shape[1]:].cpu().numpy()
    del model, loaded
    gc.collect()
    return out, weight_bytes, tokens


def make_prompts(batches: list[int], prompt_len: int, vocab: int, seed: int) -> dict:
    """The runner's own random inputs (``benchmark.input_source=random``) per batch size."""
    from ascend_lab.bench.scenarios import make_inputs
    from ascend_lab.config.benchmark import BenchmarkConfig

    bench = BenchmarkConfig(scenario="generate", seq_len=prompt_len)
    return {b: make_inputs(bench, b, vocab, seed) for b in batches}


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Position-wise agreement of two [rows, tokens] greedy streams, and their common prefixes."""
    same = reference == other
    prefix = [int(np.argmin(row)) if not row.all() else row.size for row in same]
    return {"agreement": float(same.mean()), "mean_common_prefix": float(np.mean(prefix)),
            "rows_identical": int(sum(p == same.shape[1] for p in prefix)), "rows": int(same.shape[0])}


# ---------------------------------------------------------------------------------------------
# Runner overhead


def plain_loop(spec_json: str) -> None:
    """The overhead baseline: what a task=bench sweep does per batch, without the runner."""
    from ascend_lab.bench.generation import GraphLayout
    from ascend_lab.bench.scenarios import make_inputs, run_generate
    from ascend_lab.config.benchmark import BenchmarkConfig
    from ascend_lab.device import HostTimer
    from ascend_lab.runtimes.onnxruntime_runtime import OnnxRuntime
    from ascend_lab.tasks.bench import engine_for

    spec = json.loads(spec_json)
    layout = GraphLayout(**spec["layout"])
    results = {}
    for batch in spec["batches"]:
        bench = BenchmarkConfig(**{**spec["benchmark"], "batch_size": batch})
        with OnnxRuntime(spec["onnx_path"], spec["device"], 0, *spec["runtime"]) as runtime:
            ids, mask = make_inputs(bench, batch, layout.vocab_size, spec["seed"])
            engine = engine_for(runtime, layout, ids.shape[1] + bench.new_tokens)
            result = run_generate(engine, ids, mask, bench, HostTimer, runtime, None, "onnxruntime")
        results[batch] = result.metrics["decode_tokens_s"]
    print(json.dumps(results))


def runner_overhead(cfg, args, exported) -> dict:
    bench = {"scenario": "generate", "seq_len": args.prompt_len, "new_tokens": args.overhead_new_tokens,
             "warmup": 1, "iterations": args.overhead_iterations, "min_duration_s": 0.0}
    batches = [1, 4, 8]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    sweep = [sys.executable, "-m", "ascend_lab.run", "-m", "task=bench",
             f"benchmark.batch_size={','.join(map(str, batches))}", f"device={args.device}", "runtime=onnxruntime",
             "tracking.experiment=ascend_lab_benchmarks_overhead", f"seed={cfg.seed}",
             *[f"benchmark.{k}={v}" for k, v in bench.items()], *args.overrides]
    layout = {f.name: getattr(exported, f.name) for f in dataclasses.fields(exported)
              if f.name in ("graph", "num_layers", "num_kv_heads", "head_dim", "vocab_size", "dtype")}
    spec = {"layout": layout, "batches": batches, "benchmark": bench, "onnx_path": str(exported.onnx_path),
            "device": args.device, "seed": cfg.seed,
            "runtime": [cfg.runtime.intra_op_threads, cfg.runtime.inter_op_threads, cfg.runtime.graph_optimization]}
    plain = [sys.executable, str(Path(__file__).resolve()), "--plain-loop", json.dumps(spec)]

    def wall(cmd) -> float:
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=args.launch_dir, env=env, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:6])} … failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return elapsed

    print("runner overhead: plain loop, then the -m sweep, then the plain loop again", flush=True)
    plain_s = [wall(plain)]
    sweep_s = wall(sweep)
    plain_s.append(wall(plain))
    help_s = sorted(wall([sys.executable, "-m", "ascend_lab.run", "--help"]) for _ in range(3))
    plain_mean = statistics.mean(plain_s)
    return {"sweep_seconds": sweep_s, "plain_loop_seconds": plain_mean, "plain_loop_runs": plain_s,
            "runner_overhead": sweep_s / plain_mean, "help_seconds": help_s[1], "sweep_command": " ".join(sweep[1:])}


# ---------------------------------------------------------------------------------------------
# Report


def tables(figures: list[Figure], bw: dict, ratios: dict, agree: dict, overhead: dict | None, meta: dict) -> str:
    from ascend_lab.report import format_table

    read = bw["read_gb_s"]
    rows = [(f.row, f.batch, f"{f.decode_tokens_s:.2f}", f"{f.ttft_ms:.0f}", f"{f.tpot_ms:.1f}",
             f"{f.step_bytes / 1e9:.3f}", f"{f.roofline_tokens_s(read):.1f}", f"{100 * f.roofline_fraction(read):.1f}")
            for f in figures]
    parts = [format_table(["row", "batch", "decode tok/s", "TTFT ms", "ms/token", "weights GB/step",
                           "roofline tok/s", "% roofline"], rows,
                          title=f"decode: {meta['model']} ({meta['dtype']}) on {meta['device']}, prompt "
                                f"{meta['prompt_len']}, {meta['new_tokens']} new tokens, median of {meta['reps']}")]
    parts.append(f"read bandwidth {read:.1f} GB/s (best reduction over a {bw['bandwidth_array_gb']:.1f} GB float32 "
                 "array; GB/s by kernel and threads: "
                 + ", ".join(f"{k[len('read_gb_s_'):]} {v:.1f}" for k, v in bw.items() if k.startswith("read_gb_s_"))
                 + f"); copy {bw['copy_rw_gb_s']:.1f} GB/s counting read + write; load {meta['load_before']} → "
                 f"{meta['load_after']}")
    parts.append(format_table(["ratio", "value", "target"],
                              [(k, f"{v:.2f}", _target_text(k)) for k, v in ratios.items()], title="ratios"))
    if agree:
        parts.append(format_table(["comparison", "agreement", "mean common prefix", "rows identical", "details"],
                                  [(k, f"{100 * v['agreement']:.1f} %", f"{v['mean_common_prefix']:.1f}",
                                    f"{v['rows_identical']}/{v['rows']}",
                                    ", ".join(f"{n} {x:.3g}" for n, x in v.items() if n.startswith(("fp32", "int8"))))
                                   for k, v in agree.items()],
                                  title=f"greedy agreement, first {meta['agreement_tokens']} tokens"))
    if overhead:
        parts.append(format_table(["runner", "value", "target"], [
            ("-m sweep 1,4,8 (s)", f"{overhead['sweep_seconds']:.1f}", ""),
            ("plain loop (s)", f"{overhead['plain_loop_seconds']:.1f}", ""),
            ("sweep / plain", f"{overhead['runner_overhead']:.3f}", _target_text("runner_overhead")),
            ("--help (s)", f"{overhead['help_seconds']:.2f}", _target_text("help_seconds"))], title="runner overhead"))
    return "\n\n".join(parts)


def _target_text(key: str) -> str:
    for name, target in TARGETS.items():
        if key.startswith(name) or key == name:
            if name in ("runner_overhead", "help_seconds"):
                return f"≤ {target}" if name == "runner_overhead" else f"< {target}"
            return f"≥ {target}"
    return ""


def compute_ratios(figures: list[Figure], read_gb_s: float) -> dict:
    by = {(f.row, f.batch): f for f in figures}
    ratios = {}
    hf1 = by.get(("hf", 1))
    for (row, batch), f in by.items():
        if batch == 1 and row.startswith("ort"):
            ratios[f"{'ort_roofline_fraction' if row == 'ort' else 'roofline_fraction'}.{row}"] = \
                f.roofline_fraction(read_gb_s)
            if hf1 is not None:
                key = "int8_vs_hf" if row.startswith("ort_int8") else "ort_vs_hf" if row == "ort" else "vs_hf"
                ratios[f"{key}.{row}"] = f.decode_tokens_s / hf1.decode_tokens_s
        if batch == 8 and (row, 1) in by:
            key = "ort_b8_vs_b1" if row == "ort" else "b8_vs_b1"
            ratios[f"{key}.{row}"] = f.decode_tokens_s / by[(row, 1)].decode_tokens_s
    return ratios


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plain_loop:
        plain_loop(args.plain_loop)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("onnxruntime", "root", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.chdir(args.launch_dir)
    from ascend_lab.bench.generation import FeedsEngine, GraphLayout
    from ascend_lab.export import ensure_exported
    from ascend_lab.export.optimize import (
        int8_graph,
        optimized_graph,
        step_weight_bytes,
    )
    from ascend_lab.runtimes.onnxruntime_runtime import OnnxRuntime
    from ascend_lab.runtimes.ort_engine import OrtEngine

    load_before = _load()
    cfg, ctx = compose(args.launch_dir, args.overrides, args.device)
    device = ctx.device
    print(f"model {cfg.model.name} ({cfg.model.dtype}), device {device.torch_device}, batches {args.batches}, "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}, load {load_before}", flush=True)
    bw = read_bandwidth(args.bandwidth_gb)
    print(f"read bandwidth {bw['read_gb_s']:.1f} GB/s, copy {bw['copy_rw_gb_s']:.1f} GB/s (r+w)", flush=True)
    exported = ensure_exported(cfg, ctx)
    layout = GraphLayout.from_exported(exported)
    inputs = make_prompts(args.batches, args.prompt_len, layout.vocab_size, cfg.seed)
    # Other prompts than the timed ones: the agreement is over seeded prompts, not one batch's.
    agree_ids = make_prompts([args.agreement_prompts], args.prompt_len, layout.vocab_size,
                             cfg.seed + 1)[args.agreement_prompts][0]
    runtime_args = (cfg.runtime.intra_op_threads, cfg.runtime.inter_op_threads, cfg.runtime.graph_optimization)

    figures: list[Figure] = []
    agree: dict[str, dict] = {}
    tokens: dict[str, np.ndarray] = {}
    hf_tokens = None

    def record(row: str, generations: dict, step_bytes: int) -> None:
        for batch, runs in generations.items():
            figure = aggregate(row, batch, runs, step_bytes)
            figures.append(figure)
            print(f"  {row:>20} batch {batch}: {figure.decode_tokens_s:8.2f} tok/s, TTFT {figure.ttft_ms:7.0f} ms, "
                  f"{figure.tpot_ms:7.1f} ms/token, {100 * figure.roofline_fraction(bw['read_gb_s']):5.1f} % roofline",
                  flush=True)

    def engine_rows(row: str, path: Path, feeds: bool = False):
        if feeds:
            runtime = OnnxRuntime(path, device.kind, device.index, *runtime_args)
            engine = FeedsEngine(runtime, layout)
        else:
            engine = OrtEngine.open(path, layout, device.kind, device.index, *runtime_args)
        record(row, time_engine(engine, inputs, args), step_weight_bytes(path))
        from ascend_lab.bench.generation import greedy_generate
        from ascend_lab.device import HostTimer

        tokens[row] = greedy_generate(engine, agree_ids, np.ones_like(agree_ids), args.agreement_tokens,
                                      HostTimer).tokens
        return engine

    if "hf" in args.rows:
        print("hf generate …", flush=True)
        generations, weight_bytes, hf_tokens = hf_generations(cfg, args, inputs, agree_ids, device.torch_device)
        record("hf", generations, weight_bytes)
    if "ort_feeds" in args.rows:
        print("onnxruntime, numpy feeds …", flush=True)
        engine_rows("ort_feeds", exported.onnx_path, feeds=True)
        gc.collect()
    fp_engine = None
    if "ort" in args.rows or "ort_int8" in args.rows:
        print("onnxruntime, I/O binding …", flush=True)
        fp_engine = engine_rows("ort", exported.onnx_path) if "ort" in args.rows else \
            OrtEngine.open(exported.onnx_path, layout, device.kind, device.index, *runtime_args)
    if "ort_opt" in args.rows:
        print("onnxruntime, transformer-optimised graph …", flush=True)
        config = _hf_config(cfg)
        path = optimized_graph(exported, config.num_attention_heads, config.hidden_size)
        engine_rows("ort_opt", path)
        gc.collect()
    if "ort_int8" in args.rows:
        if cfg.model.dtype != "float32":
            print(f"int8 rows skipped: they quantise float32 weights (model.dtype={cfg.model.dtype})")
        else:
            for method in args.int8_methods:
                row = f"ort_int8_{method}"
                print(f"onnxruntime, int8 ({method}) …", flush=True)
                path = int8_graph(exported, method)
                q_engine = engine_rows(row, path)
                if "ort" not in tokens:
                    tokens["ort"] = _tokens(fp_engine, agree_ids, args.agreement_tokens)
                agree[f"{row} vs ort fp32"] = {**agreement(tokens["ort"], tokens[row]),
                                               **_logit_stats(fp_engine, q_engine, agree_ids)}
                del q_engine
                gc.collect()
    if hf_tokens is not None:
        for row in ("ort", "ort_feeds", "ort_opt"):
            if row in tokens:
                agree[f"{row} vs hf"] = agreement(hf_tokens, tokens[row])
    del fp_engine
    gc.collect()

    overhead = None
    if not args.skip_overhead:
        overhead = runner_overhead(cfg, args, exported)
    ratios = compute_ratios(figures, bw["read_gb_s"])
    if overhead:
        ratios["runner_overhead"] = overhead["runner_overhead"]
        ratios["help_seconds"] = overhead["help_seconds"]
    meta = {"model": cfg.model.name, "dtype": cfg.model.dtype, "device": str(device.torch_device),
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps,
            "agreement_tokens": args.agreement_tokens, "load_before": load_before, "load_after": _load(),
            "host": platform.node(), "cpu": platform.processor() or platform.machine()}
    text = tables(figures, bw, ratios, agree, overhead, meta)
    print("\n" + text)
    results = {"meta": meta, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "bandwidth": bw, "figures": [dataclasses.asdict(f) for f in figures], "ratios": ratios,
               "agreement": agree, "overhead": overhead, "onnx_sha256": exported.sha256}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    if not args.no_track:
        _track(args, results, text, figures, bw)
    return 0


def _tokens(engine, ids: np.ndarray, new_tokens: int) -> np.ndarray:
    from ascend_lab.bench.generation import greedy_generate
    from ascend_lab.device import HostTimer

    return greedy_generate(engine, ids, np.ones_like(ids), new_tokens, HostTimer).tokens


def _logit_stats(fp_engine, q_engine, ids: np.ndarray) -> dict:
    """How far int8 moves the last prompt position's logits, against the float top-1/top-2 margin."""
    mask = np.ones_like(ids)
    fp_engine.prefill(ids, mask)
    ref = fp_engine.last_logits
    q_engine.prefill(ids, mask)
    quant = q_engine.last_logits
    top2 = np.sort(ref, axis=-1)[:, -2:]
    return {"fp32_top1_margin_median": float(np.median(top2[:, 1] - top2[:, 0])),
            "fp32_logit_std": float(ref.std()),
            "int8_logit_max_abs_diff": float(np.abs(ref - quant).max()),
            "int8_logit_mean_abs_diff": float(np.abs(ref - quant).mean())}


def _hf_config(cfg):
    from ascend_lab.models import qwen2_config

    if cfg.model.weights == "random":
        return qwen2_config(cfg.model)
    from transformers import AutoConfig

    from ascend_lab.models import resolve_pretrained_folder

    return AutoConfig.from_pretrained(str(resolve_pretrained_folder(cfg.model)))


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _track(args, results: dict, text: str, figures: list[Figure], bw: dict) -> None:
    from ascend_lab.config.tracking import TrackingConfig
    from ascend_lab.tracking import ending, environment_tags, open_run, prepare_store

    store = prepare_store(TrackingConfig(uri=args.tracking_uri, experiment=args.experiment), args.launch_dir)
    meta = results["meta"]
    tracker = open_run(store, f"decode_vs_hf-{meta['model']}-{meta['device']}",
                       {"script": "benchmarks/decode_vs_hf.py", "model": meta["model"], "device": meta["device"],
                        "onnx_sha256": results["onnx_sha256"], **environment_tags(args.launch_dir)})
    with ending(tracker):
        tracker.log_params({"overrides": " ".join(args.overrides), "batches": args.batches,
                            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps,
                            "warmup": args.warmup, "rows": ",".join(args.rows), "seed": args.seed,
                            "load_before": meta["load_before"]})
        metrics = {k: v for k, v in bw.items() if isinstance(v, (int, float))}
        for f in figures:
            prefix = f"{f.row}.b{f.batch}"
            metrics.update({f"{prefix}.decode_tokens_s": f.decode_tokens_s, f"{prefix}.ttft_ms": f.ttft_ms,
                            f"{prefix}.tpot_ms": f.tpot_ms,
                            f"{prefix}.roofline_fraction": f.roofline_fraction(bw["read_gb_s"])})
        metrics.update({f"ratio.{k}": v for k, v in results["ratios"].items()})
        for name, values in results["agreement"].items():
            key = name.replace(" ", "_")
            metrics.update({f"agreement.{key}.{k}": v for k, v in values.items()})
        tracker.log_metrics(metrics)
        tracker.log_text(text, "decode_vs_hf.txt")
        tracker.log_dict(results, "decode_vs_hf.json")
    print(f"logged to MLflow run {tracker.run_id} ({store.uri}, experiment {args.experiment})")


if __name__ == "__main__":
    sys.exit(main())
