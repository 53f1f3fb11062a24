#!/usr/bin/env python
"""Decode speed of the CLI's own onnxruntime path (``task=bench``) against Hugging Face ``generate``,
beside the memory-bandwidth roofline measured in the same run, plus the runner's own overhead; one run,
one model, one set of prompts.

    python benchmarks/decode_vs_hf.py                      # CPU: Qwen2.5-0.5B shapes, random weights, fp32
    python benchmarks/decode_vs_hf.py --quick              # batch 1 only, fewer tokens
    python benchmarks/decode_vs_hf.py --tiny --no-track    # smoke test on tiny_qwen (about a minute)
    python benchmarks/decode_vs_hf.py --device cuda        # Qwen1.5-1.8B shapes, bf16 (onnxruntime-gpu rows)

Rows (``--rows``):

- ``ort`` is the CLI itself: for each batch, the config of ``python -m ascend_lab.run task=bench
  model=qwen2_5_0_5b_instruct model.weights=random runtime=onnxruntime benchmark.scenario=generate``
  (plus the batch, prompt length, new tokens, warm-up and repetitions below) is composed with Hydra's
  compose API and :func:`ascend_lab.tasks.bench.run` runs in this process; its figures are the returned
  row's metrics, exactly what that command logs to MLflow.
- ``torch``: the same for ``runtime=torch`` (the CLI's PyTorch path over the same graph contract).
- ``hf``: Hugging Face ``model.generate`` of the same seeded model in PyTorch (eager attention, default
  dynamic cache, plain greedy of exactly ``max_new_tokens``: ``eos_token_id=None``, so no EOS stop and no
  EOS masking, as the engines decode), timed by a streamer that stamps each token.
- ``ort_plain``: the CLI with ``runtime.transformer_optimize=false``: the export as it is, without
  onnxruntime's transformer optimizer (the ``ort`` row loads the optimised graph, the default).
- ``ort_int8_<method>``: the int8 graph (:func:`ascend_lab.export.optimize.int8_graph`), derived from the
  CLI's export and opened exactly as the CLI opens its export (``open_engine`` over a plan naming the
  derived file: :class:`~ascend_lab.runtimes.onnxruntime.runtime.OnnxRuntime`, whose session comes from
  ``open_session``, the one session factory), then timed by the CLI's own generate scenario (``task=bench``'s
  ``engine_for`` → ``Runtime.engine`` → ``CacheEngine``, ``run_generate``).

Method: every row decodes the same seeded random prompts (``benchmark.input_source=random``, the seed of
the config, ``--prompt-len`` tokens) for exactly ``--new-tokens`` tokens; ``--warmup`` untimed
generations, then ``--reps`` timed ones (``benchmark.warmup`` / ``benchmark.iterations``,
``benchmark.min_duration_s=0``). Figures have task=bench's definitions for every row: TTFT = prefill +
first token (median); ms/token = median gap between later tokens; decode tokens/s = batch × (new − 1) /
mean decode time (the new − 1 steps after the first token).

Roofline (:mod:`ascend_lab.bench.roofline`): a decode step reads every weight once, so roofline tokens/s
= batch × read bandwidth / weight bytes per step, with the weight bytes counted from the graph each row runs
(HF: its parameters). The KV cache (under 1 % of the weights here) is left out; the report prints its size.
The read bandwidth (the best of several read kernels over a ≥ 1 GB float32 array) is measured at the start
and again after every timed job, and each figure's roofline uses the higher of the two readings taken just
before and just after its job. On a shared host the neighbours move the bandwidth by ±20 % from minute to
minute; a reading from another minute would judge a job by conditions it did not run in, and the higher of
the two keeps the roofline strict. The headline figure, the ``ort`` row at batch 1, is run ``--rounds``
times that way, and its fraction is the median round's (every round is printed).

Runner overhead: a 3-point sweep ``python -m ascend_lab.run -m task=bench benchmark.batch_size=1,4,8
...`` (generate scenario, same model, tracked as usual) against the same work done by a plain Python
loop in a fresh interpreter (open the export with ``OnnxRuntime``, ``Runtime.engine``, ``run_generate``,
per batch); and ``python -m ascend_lab.run --help`` wall time.

Results are printed and logged to MLflow (experiment ``ascend_lab_benchmarks``, store
``sqlite:///outputs/mlflow.db`` under ``--launch-dir``) unless ``--no-track``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import gc
import io
import itertools
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a plain checkout works too

log = logging.getLogger("decode_vs_hf")

# The model of the command (the preset's dtype is float32); the GPU run uses larger shapes in bf16.
CPU_MODEL = ["model=qwen2_5_0_5b_instruct", "model.weights=random"]
GPU_MODEL = ["model=qwen1_5_1_8b_chat", "model.weights=random", "model.dtype=bfloat16"]
TINY_MODEL = ["model=tiny_qwen"]
ROWS = ("hf", "ort", "torch", "ort_plain", "ort_int8")
INT8_METHODS = ("matmul_nbits", "dynamic")
# Ratio → (comparison, target). Issue 11: fp32 decode at batch 1 reaches 90 % of the roofline measured in
# the same run, and the ratio to HF eager is reported (no target: HF itself reaches about 70 % of the
# roofline, so ort ≤ 100 % caps the ratio near 1.4×). The others are the earlier performance issue's.
TARGETS: dict[str, tuple[str, float]] = {
    "ort_roofline_fraction": ("≥", 0.90),
    "ort_b8_vs_b1": ("≥", 5.0),
    "int8_vs_hf": ("≥", 3.0),
    "int8_agreement": ("≥", 0.90),
    "runner_overhead": ("≤", 1.15),
    "help_seconds": ("<", 2.0),
}
# Ratios printed first, in this order.
HEADLINE = ("ort_roofline_fraction", "ort_vs_hf", "hf_roofline_fraction", "ort_b8_vs_b1")


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
    p.add_argument("--reps", type=int, default=3, help="timed generations per row and batch")
    p.add_argument("--rounds", type=int, default=None,
                   help="times the headline job (ort, batch 1) runs, each between two bandwidth readings; "
                        "its ratio is the median round's (default 3; --quick: 1)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
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
    p.add_argument("--seed", type=int, default=0, help="the config's seed (weights and prompts)")
    p.add_argument("--plain-loop", default=None, help=argparse.SUPPRESS)  # internal: the overhead baseline
    args = p.parse_args(argv)
    if args.plain_loop:
        return args
    from ascend_lab.bench.roofline import MIN_ROOFLINE_ARRAY_GB

    if args.overrides is None:
        args.overrides = TINY_MODEL if args.tiny else GPU_MODEL if args.device == "cuda" else CPU_MODEL
    default_batches = "1" if args.quick else "1,4" if args.tiny else "1,4,8"
    args.batches = [int(b) for b in (args.batches or default_batches).split(",")]
    args.new_tokens = args.new_tokens or (8 if args.tiny else 32 if args.quick else
                                          128 if args.device == "cuda" else 64)
    if args.quick:
        args.reps, args.skip_overhead = 1, True
    args.rounds = args.rounds if args.rounds is not None else 1 if args.quick else 3
    args.rows = [r for r in args.rows.split(",") if r]
    args.int8_methods = [m for m in args.int8_methods.split(",") if m]
    unknown = set(args.rows) - set(ROWS) | set(args.int8_methods) - set(INT8_METHODS)
    if unknown:
        p.error(f"unknown rows or int8 methods: {sorted(unknown)}")
    if args.new_tokens < 2:
        p.error("--new-tokens must be ≥ 2 (decode is timed over new_tokens - 1 steps)")
    if args.bandwidth_gb < MIN_ROOFLINE_ARRAY_GB:
        p.error(f"--bandwidth-gb must be ≥ {MIN_ROOFLINE_ARRAY_GB} (a smaller array measures the caches)")
    if args.reps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--reps and --rounds must be ≥ 1 and --warmup ≥ 0")
    args.launch_dir = Path(args.launch_dir or os.getcwd()).resolve()
    return args


# Row → extra overrides of the CLI rows (on top of bench_overrides).
ROW_OVERRIDES = {"ort_plain": ("runtime.transformer_optimize=false",)}


def bench_overrides(args, runtime: str, batch: int, row: str | None = None) -> list[str]:
    """The command-line overrides of the ``task=bench`` job a CLI row runs (tracking aside)."""
    return ["task=bench", *args.overrides, f"runtime={runtime}", *ROW_OVERRIDES.get(row, ()),
            "benchmark.scenario=generate",
            f"device={args.device}", f"seed={args.seed}", f"benchmark.batch_size={batch}",
            f"benchmark.seq_len={args.prompt_len}", f"benchmark.new_tokens={args.new_tokens}",
            f"benchmark.warmup={args.warmup}", f"benchmark.iterations={args.reps}", "benchmark.min_duration_s=0"]


def cli_command(overrides: list[str]) -> str:
    return " ".join(["python -m ascend_lab.run", *overrides])


def compose(launch_dir: Path, overrides: list[str], tracker=None):
    """The validated AppConfig of ``overrides`` (with ``tracking=off``: this script logs its own run) and
    a JobContext over ``tracker`` (default: the no-op Tracker)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ascend_lab.config import validate
    from ascend_lab.runtimes.registry import register_configs
    from ascend_lab.context import JobContext
    from ascend_lab.tracking import Tracker

    conf_dir = REPO / "conf" if (REPO / "conf" / "config.yaml").is_file() else None
    if conf_dir is None:
        import ascend_lab.conf as packaged  # an installed wheel keeps conf/ as a package

        conf_dir = Path(packaged.__file__).parent
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = validate(hydra_compose(config_name="config", overrides=[*overrides, "tracking=off"]))
    return cfg, JobContext(cfg, tracker if tracker is not None else Tracker(), launch_dir, launch_dir)


# ---------------------------------------------------------------------------------------------
# Rows


def _tracker_class():
    from ascend_lab.tracking import Tracker

    class RecordingTracker(Tracker):
        """Keeps the tags and metrics a task gives it (the base Tracker records nothing)."""

        def __init__(self) -> None:
            self.tags: dict[str, Any] = {}
            self.metrics: dict[str, float] = {}

        def set_tags(self, tags) -> None:
            self.tags.update({k: str(v) for k, v in tags.items()})

        def log_metrics(self, metrics, step=None) -> None:
            self.metrics.update(metrics)

    return RecordingTracker


@dataclasses.dataclass
class CliRun:
    """One in-process ``task=bench`` job: the row it returned, what it tagged, its command and console."""

    command: str
    metrics: dict[str, float]
    tags: dict[str, str]
    output: str
    batch: int
    runtime: str


def run_cli_bench(launch_dir: Path, overrides: list[str], quiet: bool = True) -> CliRun:
    """What ``python -m ascend_lab.run <overrides> tracking=off`` does for a ``task=bench`` job:
    :func:`ascend_lab.tasks.bench.run` on the composed config, in this process."""
    from ascend_lab.tasks import bench

    tracker = _tracker_class()()
    cfg, ctx = compose(launch_dir, overrides, tracker)
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        row = bench.run(cfg, ctx)
    return CliRun(cli_command([*overrides, "tracking=off"]), dict(row.metrics), tracker.tags, out.getvalue(),
                  row.batch_size, row.runtime)


@contextlib.contextmanager
def open_graph(cfg, ctx, exported, onnx_path: Path):
    """``onnx_path`` (a graph derived from ``exported``) opened exactly as the CLI opens its export:
    ``open_engine`` over a plan naming it (→ ``OnnxRuntime`` → ``open_session``, ``runtime.*`` settings)."""
    from ascend_lab.graph_contract import GraphFile
    from ascend_lab.prepare import RuntimePlan, open_engine

    plan = RuntimePlan(cfg.runtime, f"derived graph {Path(onnx_path).parent.name}",
                       GraphFile(Path(onnx_path), exported.contract), exported)
    with open_engine(cfg, ctx, plan) as loaded:
        yield loaded.runtime


def cli_plan(cfg, ctx):
    """What ``task=bench`` / ``task=infer`` prepare for ``cfg`` (export, derived graph) before loading it."""
    from ascend_lab.prepare import plan_runtime

    return plan_runtime(cfg, ctx)


@contextlib.contextmanager
def open_cli_runtime(cfg, ctx):
    """The runtime ``task=bench`` / ``task=infer`` open for ``cfg`` (``open_engine``)."""
    from ascend_lab.prepare import open_engine

    with open_engine(cfg, ctx) as loaded:
        yield loaded.runtime


def time_generate(runtime, cfg, ctx, batch: int) -> dict[str, float]:
    """task=bench's generate scenario on an open runtime at ``batch``: the same inputs, engine, timer and
    statistics as :func:`ascend_lab.tasks.bench.run`."""
    from ascend_lab.bench.scenarios import make_inputs, run_generate
    from ascend_lab.runtimes.engine import engine_for

    bench = dataclasses.replace(cfg.benchmark, batch_size=batch)
    ids, mask = make_inputs(bench, batch, runtime.contract.dims.vocab_size, cfg.seed)
    engine = engine_for(runtime, cfg.export, ids.shape[1] + bench.new_tokens)
    result = run_generate(engine, ids, mask, bench, runtime.timer(ctx.device), runtime, ctx.device, runtime.name)
    return result.metrics


def greedy_tokens(runtime, cfg, ids: np.ndarray, new_tokens: int) -> np.ndarray:
    """Greedy tokens [rows, new_tokens] of ``runtime``'s engine (task=bench's) on ``ids``."""
    from ascend_lab.bench.generation import greedy_generate
    from ascend_lab.device import HostTimer
    from ascend_lab.runtimes.engine import engine_for

    engine = engine_for(runtime, cfg.export, ids.shape[1] + new_tokens)
    return greedy_generate(engine, ids, np.ones_like(ids), new_tokens, HostTimer).tokens


def last_prompt_logits(runtime, cfg, ids: np.ndarray) -> np.ndarray:
    """Logits [rows, vocab] at the last prompt position (the prefill's last execution)."""
    from ascend_lab.runtimes.engine import engine_for

    engine = engine_for(runtime, cfg.export, ids.shape[1] + 1)
    engine.prefill(ids, np.ones_like(ids))
    return engine.backend.last_logits()


@dataclasses.dataclass
class Figure:
    row: str
    batch: int
    ttft_ms: float  # median
    tpot_ms: float  # median
    decode_tokens_s: float  # batch × (new − 1) / mean decode time
    step_bytes: int
    reps: int
    read_gb_s: float  # the bandwidth this figure's roofline uses (BandwidthTrail.around)
    round_index: int = 0  # which run of the same row and batch (--rounds)

    @classmethod
    def of(cls, row: str, batch: int, metrics: dict, step_bytes: int, read_gb_s: float,
           round_index: int = 0) -> "Figure":
        return cls(row, batch, ttft_ms=metrics["ttft_ms_p50"], tpot_ms=metrics["tpot_ms_p50"],
                   decode_tokens_s=metrics["decode_tokens_s"], step_bytes=step_bytes,
                   reps=int(metrics["iterations"]), read_gb_s=read_gb_s, round_index=round_index)

    def roofline_tokens_s(self) -> float:
        from ascend_lab.bench.roofline import roofline_tokens_s

        return roofline_tokens_s(self.batch, self.read_gb_s, self.step_bytes)

    def roofline_fraction(self) -> float:
        from ascend_lab.bench.roofline import roofline_fraction

        return roofline_fraction(self.decode_tokens_s, self.batch, self.read_gb_s, self.step_bytes)


class BandwidthTrail:
    """The read bandwidth measured at the start and after every timed job (see the module docstring)."""

    def __init__(self, gb: float, measure=None) -> None:
        """``measure(gb)`` → Bandwidth; default :func:`ascend_lab.bench.roofline.measure_read_bandwidth`."""
        if measure is None:
            from ascend_lab.bench.roofline import measure_read_bandwidth as measure
        self._measure = lambda: measure(gb)
        self.readings = [self._measure()]

    def around(self, job):
        """``(job(), GB/s)``: the job's result and the higher of the readings just before and just after it."""
        before = self.readings[-1]
        result = job()
        self.readings.append(self._measure())
        return result, max(before.read_gb_s, self.readings[-1].read_gb_s)

    def describe(self) -> str:
        values = [b.read_gb_s for b in self.readings]
        return (f"{self.readings[0].describe()}; re-measured after each timed job: {len(values)} readings, "
                f"{min(values):.1f}–{max(values):.1f} GB/s (median {statistics.median(values):.1f})")


def round_counts(figures: list[Figure]) -> collections.Counter:
    """How many rounds each (row, batch) ran."""
    return collections.Counter((f.row, f.batch) for f in figures)


def representatives(figures: list[Figure]) -> dict[tuple[str, int], Figure]:
    """Per (row, batch), the figure of the median round by roofline fraction (the lower median of an even
    count): what ratios are computed from when a job ran more than once."""
    groups: dict[tuple[str, int], list[Figure]] = {}
    for f in figures:
        groups.setdefault((f.row, f.batch), []).append(f)
    return {key: sorted(group, key=Figure.roofline_fraction)[(len(group) - 1) // 2] for key, group in groups.items()}


def generation_metrics(results, batch: int, new_tokens: int) -> dict[str, float]:
    """The figures :func:`ascend_lab.bench.scenarios.run_generate` reports, from timed GenerationResults
    (for the HF row, whose loop is not an Engine)."""
    from ascend_lab.bench.stats import per_second, summarize

    decode = summarize([r.decode_ms for r in results])
    return {"ttft_ms_p50": summarize([r.ttft_ms for r in results]).p50,
            "tpot_ms_p50": summarize([ms for r in results for ms in r.step_ms]).p50,
            "decode_tokens_s": per_second(batch * (new_tokens - 1), decode.mean), "iterations": len(results)}


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


def hf_row(cfg, args, agree_ids: np.ndarray, torch_device) -> tuple[dict[int, dict], int, np.ndarray]:
    """Hugging Face eager generate: per batch its metrics; its weight bytes per step; its greedy tokens on
    the agreement prompts (the reference the exported graph must reproduce)."""
    import torch

    from ascend_lab.bench.generation import GenerationResult
    from ascend_lab.bench.roofline import parameter_bytes
    from ascend_lab.bench.scenarios import make_inputs
    from ascend_lab.models import load_model

    loaded = load_model(cfg.model, cfg.seed, device=torch_device)
    model = loaded.model
    weight_bytes = parameter_bytes(model.parameters())
    # Plain greedy of exactly max_new_tokens, as the engines decode: no EOS stop and no EOS masking
    # (min_new_tokens would set EOS's logit to -inf, so HF's tokens would differ wherever EOS is the argmax).
    greedy = {"do_sample": False, "num_beams": 1, "eos_token_id": None, "pad_token_id": loaded.tokenizer.pad_token_id}
    out = {}
    for batch in args.batches:
        bench = dataclasses.replace(cfg.benchmark, batch_size=batch)
        ids, mask = make_inputs(bench, batch, model.config.vocab_size, cfg.seed)  # task=bench's inputs
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
                                           streamer=clock, **greedy)
            stamps = [started, *clock.stamps]
            gaps = [(b - a) * 1e3 for a, b in itertools.pairwise(stamps[1:])]
            runs.append(GenerationResult(generated[:, ids.shape[1]:].cpu().numpy(), (stamps[1] - started) * 1e3, gaps))
        out[batch] = generation_metrics(runs[args.warmup:], batch, args.new_tokens)
    with torch.inference_mode():
        ids_t = torch.from_numpy(agree_ids).to(torch_device)
        generated = model.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                                   max_new_tokens=args.agreement_tokens, **greedy)
    tokens = generated[:, agree_ids.shape[1]:].cpu().numpy()
    del model, loaded
    gc.collect()
    return out, weight_bytes, tokens


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """Position-wise agreement of two [rows, tokens] greedy streams, and their common prefixes."""
    same = reference == other
    prefix = [int(np.argmin(row)) if not row.all() else row.size for row in same]
    return {"agreement": float(same.mean()), "mean_common_prefix": float(np.mean(prefix)),
            "rows_identical": int(sum(p == same.shape[1] for p in prefix)), "rows": int(same.shape[0])}


def logit_stats(reference: np.ndarray, quantised: np.ndarray) -> dict:
    """How far int8 moves the last prompt position's logits, against the float top-1/top-2 margin."""
    top2 = np.sort(reference, axis=-1)[:, -2:]
    return {"fp32_top1_margin_median": float(np.median(top2[:, 1] - top2[:, 0])),
            "fp32_logit_std": float(reference.std()),
            "int8_logit_max_abs_diff": float(np.abs(reference - quantised).max()),
            "int8_logit_mean_abs_diff": float(np.abs(reference - quantised).mean())}


# ---------------------------------------------------------------------------------------------
# Runner overhead


def plain_loop(spec_json: str) -> None:
    """The overhead baseline: what a task=bench sweep does per batch, without the runner."""
    from ascend_lab.bench.scenarios import make_inputs, run_generate
    from ascend_lab.config.benchmark import BenchmarkConfig
    from ascend_lab.device import HostTimer
    from ascend_lab.graph_contract import GraphContract, ModelDims
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    spec = json.loads(spec_json)
    contract = GraphContract(spec["graph"], ModelDims(**spec["dims"]), spec["dtype"])
    results = {}
    for batch in spec["batches"]:
        bench = BenchmarkConfig(**{**spec["benchmark"], "batch_size": batch})
        with OnnxRuntime(spec["onnx_path"], contract, spec["device"], 0, *spec["runtime"]) as runtime:
            ids, mask = make_inputs(bench, batch, contract.dims.vocab_size, spec["seed"])
            engine = runtime.engine(ids.shape[1] + bench.new_tokens, tuple(spec["prefill_chunks"]),
                                    spec["kv_capacity"])
            result = run_generate(engine, ids, mask, bench, HostTimer, runtime, None, "onnxruntime")
        results[batch] = result.metrics["decode_tokens_s"]
    print(json.dumps(results))


def runner_overhead(cfg, args, exported, onnx_path: Path) -> dict:
    """The -m sweep against a plain loop over ``onnx_path`` (the graph the sweep's jobs load)."""
    bench = {"scenario": "generate", "seq_len": args.prompt_len, "new_tokens": args.overhead_new_tokens,
             "warmup": 1, "iterations": args.overhead_iterations, "min_duration_s": 0.0}
    batches = [1, 4, 8]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    sweep = [sys.executable, "-m", "ascend_lab.run", "-m", "task=bench",
             f"benchmark.batch_size={','.join(map(str, batches))}", f"device={args.device}", "runtime=onnxruntime",
             "tracking.experiment=ascend_lab_benchmarks_overhead", f"seed={cfg.seed}",
             *[f"benchmark.{k}={v}" for k, v in bench.items()], *args.overrides]
    spec = {"graph": exported.graph, "dims": dataclasses.asdict(exported.dims), "dtype": exported.dtype,
            "batches": batches, "benchmark": bench, "onnx_path": str(onnx_path), "device": args.device,
            "seed": cfg.seed, "prefill_chunks": list(cfg.export.prefill_chunks), "kv_capacity": cfg.export.kv_capacity,
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
# Ratios and report


def compute_ratios(figures: list[Figure], agree: dict | None = None) -> dict[str, float]:
    """The ratios the report prints: headline ones (:data:`HEADLINE`) first, then per row; a row and batch
    run over several rounds counts with its median round (:func:`representatives`)."""
    by = representatives(figures)
    hf1 = by.get(("hf", 1))
    ratios: dict[str, float] = {}
    for (row, batch), f in by.items():
        if batch == 1:
            key = {"ort": "ort_roofline_fraction", "hf": "hf_roofline_fraction"}.get(row, f"roofline_fraction.{row}")
            ratios[key] = f.roofline_fraction()
            if hf1 is not None and row != "hf":
                key = "ort_vs_hf" if row == "ort" else f"int8_vs_hf.{row}" if row.startswith("ort_int8") \
                    else f"vs_hf.{row}"
                ratios[key] = f.decode_tokens_s / hf1.decode_tokens_s
        if batch == 8 and (row, 1) in by:
            ratios["ort_b8_vs_b1" if row == "ort" else f"b8_vs_b1.{row}"] = \
                f.decode_tokens_s / by[(row, 1)].decode_tokens_s
    for name, values in (agree or {}).items():
        row, _, reference = name.partition(" vs ")
        if row.startswith("ort_int8") and reference == "ort fp32":
            ratios[f"int8_agreement.{row}"] = values["agreement"]
    first = {k: ratios[k] for k in HEADLINE if k in ratios}
    return {**first, **{k: v for k, v in ratios.items() if k not in first}}


def target_for(key: str) -> tuple[str, float] | None:
    """The target of a ratio key (``int8_vs_hf.ort_int8_dynamic`` → ``int8_vs_hf``'s), or None."""
    return TARGETS.get(key.split(".", 1)[0])


def meets(value: float, target: tuple[str, float]) -> bool:
    op, bound = target
    return {"≥": value >= bound, "≤": value <= bound, "<": value < bound}[op]


def _target_cells(key: str, value: float) -> tuple[str, str]:
    target = target_for(key)
    if target is None:
        return "", ""
    return f"{target[0]} {target[1]}", "yes" if meets(value, target) else "NO"


def tables(figures: list[Figure], trail: BandwidthTrail, ratios: dict, agree: dict, overhead: dict | None,
           meta: dict) -> str:
    from ascend_lab.report import format_table

    rounds = round_counts(figures)
    median_of = representatives(figures)

    def label(f: Figure) -> str:
        count = rounds[(f.row, f.batch)]
        if count == 1:
            return f.row
        return f"{f.row} (round {f.round_index + 1}/{count}{', median' if median_of[(f.row, f.batch)] is f else ''})"

    rows = [(label(f), f.batch, f"{f.decode_tokens_s:.2f}", f"{f.ttft_ms:.0f}", f"{f.tpot_ms:.1f}", f"{f.step_bytes / 1e9:.3f}",
             f"{f.read_gb_s:.1f}", f"{f.roofline_tokens_s():.1f}", f"{100 * f.roofline_fraction():.1f}")
            for f in figures]
    parts = [format_table(["row", "batch", "decode tok/s", "TTFT ms", "ms/token", "weights GB/step", "read GB/s",
                           "roofline tok/s", "% roofline"], rows,
                          title=f"decode: {meta['model']} ({meta['dtype']}) on {meta['device']}, prompt "
                                f"{meta['prompt_len']}, {meta['new_tokens']} new tokens, {meta['reps']} timed "
                                f"generation(s) after {meta['warmup']} warm-up (task=bench's figures)")]
    parts.append(f"{trail.describe()}; load {meta['load_before']} → {meta['load_after']}")
    if meta.get("kv_cache_note"):
        parts.append(meta["kv_cache_note"])
    if meta.get("ort_command"):
        parts.append(f"ort row = {meta['ort_command']}")
    parts.append(format_table(["ratio", "value", "target", "met"],
                              [(k, f"{v:.2f}", *_target_cells(k, v)) for k, v in ratios.items()], title="ratios"))
    if agree:
        parts.append(format_table(["comparison", "agreement", "mean common prefix", "rows identical", "details"],
                                  [(k, f"{100 * v['agreement']:.1f} %", f"{v['mean_common_prefix']:.1f}",
                                    f"{v['rows_identical']}/{v['rows']}",
                                    ", ".join(f"{n} {x:.3g}" for n, x in v.items() if n.startswith(("fp32", "int8"))))
                                   for k, v in agree.items()],
                                  title=f"greedy agreement, first {meta['agreement_tokens']} tokens"))
    if overhead:
        parts.append(format_table(["runner", "value", "target", "met"], [
            ("-m sweep 1,4,8 (s)", f"{overhead['sweep_seconds']:.1f}", "", ""),
            ("plain loop (s)", f"{overhead['plain_loop_seconds']:.1f}", "", ""),
            ("sweep / plain", f"{overhead['runner_overhead']:.3f}",
             *_target_cells("runner_overhead", overhead["runner_overhead"])),
            ("--help (s)", f"{overhead['help_seconds']:.2f}", *_target_cells("help_seconds", overhead["help_seconds"])),
        ], title="runner overhead"))
    return "\n\n".join(parts)


def kv_cache_note(cfg, contract, batch: int, prompt_len: int, new_tokens: int, weight_bytes: int) -> str:
    """How much KV cache the kv_cache graph reads per step at ``batch`` (left out of the roofline)."""
    from ascend_lab.bench.roofline import kv_cache_bytes_per_step
    from ascend_lab.graph_contract import plan_prefill
    from ascend_lab.runtimes.engine import CAPACITY_ALIGN

    slots = plan_prefill(prompt_len, cfg.export.prefill_chunks).padded_len + new_tokens - 1
    capacity = min(-(-slots // CAPACITY_ALIGN) * CAPACITY_ALIGN, cfg.export.kv_capacity)
    kv = kv_cache_bytes_per_step(contract.slot_elements(batch), capacity, np.dtype(contract.numpy_dtype).itemsize)
    return (f"KV cache read per step at batch {batch}: {kv / 1e6:.3g} MB ({capacity} slots; "
            f"{100 * kv / weight_bytes:.2f} % of the weights), left out of the roofline")


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
    from ascend_lab.bench.roofline import step_weight_bytes
    from ascend_lab.bench.scenarios import make_inputs
    from ascend_lab.config.benchmark import BenchmarkConfig
    from ascend_lab.export import ensure_exported
    from ascend_lab.export.optimize import int8_graph

    load_before = _load()
    ort_overrides = {b: bench_overrides(args, "onnxruntime", b) for b in args.batches}
    cfg, ctx = compose(args.launch_dir, ort_overrides[args.batches[0]])
    device = ctx.device
    print(f"model {cfg.model.name} ({cfg.model.dtype}), device {device.torch_device}, batches {args.batches}, "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}, rows {','.join(args.rows)}, load {load_before}",
          flush=True)
    trail = BandwidthTrail(args.bandwidth_gb)
    bw = trail.readings[0]
    print(bw.describe(), flush=True)
    exported = ensure_exported(cfg, ctx)  # the CLI rows find it in the export cache
    contract = exported.contract
    fp_bytes = step_weight_bytes(exported.onnx_path)
    # Other prompts than the timed ones: the agreement is over seeded prompts, not one batch's.
    agree_ids = make_inputs(BenchmarkConfig(seq_len=args.prompt_len), args.agreement_prompts,
                            contract.dims.vocab_size, cfg.seed + 1)[0]

    figures: list[Figure] = []
    agree: dict[str, dict] = {}
    tokens: dict[str, np.ndarray] = {}
    cli_runs: dict[str, list[dict]] = {}
    want_hf_agreement = "hf" in args.rows

    def record(row: str, batch: int, metrics: dict, step_bytes: int, read_gb_s: float, round_index: int = 0) -> None:
        figure = Figure.of(row, batch, metrics, step_bytes, read_gb_s, round_index)
        figures.append(figure)
        print(f"  {row:>22} batch {batch}: {figure.decode_tokens_s:8.2f} tok/s, TTFT {figure.ttft_ms:7.0f} ms, "
              f"{figure.tpot_ms:7.1f} ms/token, {100 * figure.roofline_fraction():5.1f} % roofline "
              f"(read {read_gb_s:.1f} GB/s)" + (f", round {round_index + 1}" if round_index else ""), flush=True)

    def cli_tokens(row: str, runtime: str) -> None:
        """The greedy tokens on the agreement prompts of the runtime the ``row``'s CLI jobs open."""
        row_cfg, row_ctx = compose(args.launch_dir, bench_overrides(args, runtime, args.batches[0], row))
        with open_cli_runtime(row_cfg, row_ctx) as opened:
            tokens[row] = greedy_tokens(opened, row_cfg, agree_ids, args.agreement_tokens)
        gc.collect()

    def cli_rows(row: str, runtime: str) -> None:
        for batch in args.batches:
            for round_index in range(args.rounds if (row, batch) == ("ort", 1) else 1):
                run, read = trail.around(lambda: run_cli_bench(args.launch_dir,
                                                               bench_overrides(args, runtime, batch, row)))
                cli_runs.setdefault(row, []).append(dataclasses.asdict(run))
                record(row, batch, run.metrics, fp_bytes, read, round_index)

    if "hf" in args.rows:
        print("hf generate …", flush=True)
        (hf_metrics, hf_bytes, tokens["hf"]), read = trail.around(
            lambda: hf_row(cfg, args, agree_ids, device.torch_device))
        for batch, metrics in hf_metrics.items():
            record("hf", batch, metrics, hf_bytes, read)
    int8_rows = "ort_int8" in args.rows and cfg.model.dtype == "float32"
    fp_logits = None
    if "ort" in args.rows:
        print(f"ort: in-process {cli_command(ort_overrides[args.batches[0]])} (and the other batches) …",
              flush=True)
        cli_rows("ort", "onnxruntime")
    if ("ort" in args.rows and want_hf_agreement) or int8_rows:
        with open_cli_runtime(cfg, ctx) as runtime:  # the session the ort row's jobs opened, for its tokens
            tokens["ort"] = greedy_tokens(runtime, cfg, agree_ids, args.agreement_tokens)
            if int8_rows:
                fp_logits = last_prompt_logits(runtime, cfg, agree_ids)
        gc.collect()
    if "torch" in args.rows:
        print("torch: in-process task=bench runtime=torch …", flush=True)
        cli_rows("torch", "torch")
        if want_hf_agreement:
            cli_tokens("torch", "torch")
    if "ort_plain" in args.rows:
        print("ort_plain: in-process task=bench runtime=onnxruntime runtime.transformer_optimize=false …", flush=True)
        cli_rows("ort_plain", "onnxruntime")
        if want_hf_agreement:
            cli_tokens("ort_plain", "onnxruntime")
    if "ort_int8" in args.rows:
        if not int8_rows:
            print(f"int8 rows skipped: they quantise float32 weights (model.dtype={cfg.model.dtype})")
        else:
            for method in args.int8_methods:
                row = f"ort_int8_{method}"
                print(f"onnxruntime, int8 ({method}) …", flush=True)
                path = int8_graph(exported, method)
                with open_graph(cfg, ctx, exported, path) as runtime:
                    for batch in args.batches:
                        metrics, read = trail.around(lambda: time_generate(runtime, cfg, ctx, batch))
                        record(row, batch, metrics, step_weight_bytes(path), read)
                    tokens[row] = greedy_tokens(runtime, cfg, agree_ids, args.agreement_tokens)
                    q_logits = last_prompt_logits(runtime, cfg, agree_ids)
                    agree[f"{row} vs ort fp32"] = {**agreement(tokens["ort"], tokens[row]),
                                                   **logit_stats(fp_logits, q_logits)}
                gc.collect()
    if "hf" in tokens:
        for row in ("ort", "torch", "ort_plain"):
            if row in tokens:
                agree[f"{row} vs hf"] = agreement(tokens["hf"], tokens[row])

    overhead = None
    if not args.skip_overhead:
        overhead = runner_overhead(cfg, args, exported, cli_plan(cfg, ctx).onnx_path)
    ratios = compute_ratios(figures, agree)
    if overhead:
        ratios["runner_overhead"] = overhead["runner_overhead"]
        ratios["help_seconds"] = overhead["help_seconds"]
    meta = {"model": cfg.model.name, "dtype": cfg.model.dtype, "device": str(device.torch_device),
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps, "warmup": args.warmup,
            "agreement_tokens": args.agreement_tokens, "load_before": load_before, "load_after": _load(),
            "host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "ort_command": (cli_command([*ort_overrides[args.batches[0]], "tracking=off"]) if "ort" in args.rows
                            else None),
            "kv_cache_note": kv_cache_note(cfg, contract, max(args.batches), args.prompt_len, args.new_tokens,
                                           fp_bytes)}
    text = tables(figures, trail, ratios, agree, overhead, meta)
    print("\n" + text)
    results = {"meta": meta, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "bandwidth": bw.as_dict(), "bandwidth_readings": [b.as_dict() for b in trail.readings],
               "figures": [dataclasses.asdict(f) for f in figures], "ratios": ratios,
               "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}, "agreement": agree,
               "overhead": overhead, "cli_runs": cli_runs, "onnx_sha256": exported.sha256,
               "onnx_path": str(exported.onnx_path)}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    if not args.no_track:
        _track(args, results, text, figures, trail)
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _track(args, results: dict, text: str, figures: list[Figure], trail: BandwidthTrail) -> None:
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
        readings = [b.read_gb_s for b in trail.readings]
        metrics = {**trail.readings[0].as_dict(), "read_gb_s_min": min(readings), "read_gb_s_max": max(readings),
                   "bandwidth_readings": float(len(readings))}
        rounds = round_counts(figures)
        for f in figures:
            prefix = f"{f.row}.b{f.batch}" + (f".r{f.round_index + 1}" if rounds[(f.row, f.batch)] > 1 else "")
            metrics.update({f"{prefix}.decode_tokens_s": f.decode_tokens_s, f"{prefix}.ttft_ms": f.ttft_ms,
                            f"{prefix}.tpot_ms": f.tpot_ms, f"{prefix}.read_gb_s": f.read_gb_s,
                            f"{prefix}.roofline_fraction": f.roofline_fraction()})
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
