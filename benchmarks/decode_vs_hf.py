#!/usr/bin/env python
"""Decode speed of the CLI's own path (``task=bench``, generate scenario) against Hugging Face ``generate``, as
fractions of the memory-bandwidth roofline the runner logs, plus the runner's own overhead; one run, one model,
one set of prompts. A thin driver: every figure but HF's is a metric the runner logs.

    python benchmarks/decode_vs_hf.py                      # CPU: Qwen2.5-0.5B shapes, random weights, fp32
    python benchmarks/decode_vs_hf.py --quick              # batch 1 only, fewer tokens
    python benchmarks/decode_vs_hf.py --tiny --no-track    # smoke test on tiny_qwen (about a minute)
    python benchmarks/decode_vs_hf.py --device cuda        # Qwen1.5-1.8B shapes, bf16 (onnxruntime-gpu rows)

Rows (``--rows``) are ``task=bench`` jobs: for each batch, the config of ``python -m ascend_lab.run task=bench
model=qwen2_5_0_5b_instruct model.weights=random benchmark.scenario=generate`` plus the row's overrides
(:data:`ROW_OVERRIDES`: ``ort`` runtime=onnxruntime, ``torch`` runtime=torch, ``ort_plain`` without the transformer
optimizer, ``ort_int8`` export.quantize=int8) and the batch, lengths, warm-up and repetitions below, composed with
Hydra's compose API and run by :func:`ascend_lab.tasks.bench.run` in this process: its figures are what that
command logs. ``hf`` is ``model.generate`` of the same seeded model (eager attention, default dynamic cache, plain
greedy of exactly ``max_new_tokens``: ``eos_token_id=None``, as the engines decode), its tokens stamped by a
streamer and summarised by the runner's own :func:`ascend_lab.bench.scenarios.generation_metrics`.

Roofline: each job logs ``roofline_tokens_s`` and ``roofline_fraction`` (:mod:`ascend_lab.bench.roofline`: the
weights and the KV cache a decode step reads, over the bandwidth). Every job gets a fresh
``telemetry.bandwidth_cache_dir``, so it measures the bandwidth itself, right after its timed decode: on a shared
host the neighbours move the bandwidth from minute to minute, and a reading from another minute would judge a job
by conditions it did not run in. HF's fraction is over the ``ort`` job's roofline at the same batch (the same
model and lengths read the same bytes). The headline job (``ort``, batch 1) runs ``--rounds`` times; its ratios
are the median round's (every round is printed).

Agreement: the accuracy measurement of task=accuracy and the tuner (:mod:`ascend_lab.accuracy_measure`) of the
``ort`` and ``ort_plain`` jobs' configurations against the float32 PyTorch model, and of ``ort_int8`` against
float32 onnxruntime, over ``accuracy.prompts`` × ``--agreement-tokens``.

Runner overhead: a 3-point sweep ``python -m ascend_lab.run -m task=bench benchmark.batch_size=1,4,8 ...``
(tracked as usual) against the same work done by a plain Python loop in a fresh interpreter (open the export with
``OnnxRuntime``, ``Runtime.engine``, ``run_generate``, per batch); and ``python -m ascend_lab.run --help`` wall time.

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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # a plain checkout works too

log = logging.getLogger("decode_vs_hf")

# The model of the command (the preset's dtype is float32); the GPU run uses larger shapes in bf16.
CPU_MODEL = ["model=qwen2_5_0_5b_instruct", "model.weights=random"]
GPU_MODEL = ["model=qwen1_5_1_8b_chat", "model.weights=random", "model.dtype=bfloat16"]
TINY_MODEL = ["model=tiny_qwen"]
# Row → the overrides of its task=bench jobs (hf is not a CLI row).
ROW_OVERRIDES = {"ort": ("runtime=onnxruntime",), "torch": ("runtime=torch",),
                 "ort_plain": ("runtime=onnxruntime", "runtime.transformer_optimize=false"),
                 "ort_int8": ("runtime=onnxruntime", "export.quantize=int8")}
ROWS = ("hf", *ROW_OVERRIDES)
# Agreement: row → (name, accuracy.* overrides of its reference).
AGREEMENT = {"ort": ("ort vs torch fp32", ()), "ort_plain": ("ort_plain vs torch fp32", ()),
             "ort_int8": ("ort_int8 vs ort fp32", ("accuracy.reference_runtime=onnxruntime",))}
# The accuracy figures the agreement table shows (task=accuracy's names).
AGREEMENT_FIGURES = ("tf_top1_agreement_mean", "fr_common_prefix_mean", "fr_top1_agreement_mean",
                     "tf_max_abs_diff_max", "accuracy_gate_passed")
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
                   help="times the headline job (ort, batch 1) runs; its ratios are the median round's "
                        "(default 3; --quick: 1)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--agreement-tokens", type=int, default=32, help="accuracy.new_tokens of the agreement (0: none)")
    p.add_argument("--bandwidth-gb", type=float, default=2.0,
                   help="telemetry.bandwidth_array_gb (≥ 1; --tiny: any size > 0, a smaller array reads the caches "
                        "and the jobs tag it roofline.bandwidth_fits=false)")
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
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        p.error(f"unknown rows: {sorted(unknown)}")
    if args.new_tokens < 2:
        p.error("--new-tokens must be ≥ 2 (decode is timed over new_tokens - 1 steps)")
    if not args.bandwidth_gb > 0 or (args.bandwidth_gb < MIN_ROOFLINE_ARRAY_GB and not args.tiny):
        # A smoke run (--tiny) checks that the figures come out, not what they are: its array may be small.
        p.error(f"--bandwidth-gb must be ≥ {MIN_ROOFLINE_ARRAY_GB} (a smaller array measures the caches; "
                "--tiny takes any size > 0)")
    if args.reps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--reps and --rounds must be ≥ 1 and --warmup ≥ 0")
    args.launch_dir = Path(args.launch_dir or os.getcwd()).resolve()
    args.bandwidth_dir = args.launch_dir / "outputs" / "bandwidth" / f"decode_vs_hf-{time.strftime('%Y%m%d-%H%M%S')}"
    return args


def bench_overrides(args, row: str, batch: int, job: int = 0) -> list[str]:
    """The command-line overrides of the ``task=bench`` job a CLI row runs (tracking aside); ``job`` numbers the
    job's own bandwidth folder."""
    return ["task=bench", *args.overrides, *ROW_OVERRIDES[row], "benchmark.scenario=generate",
            f"device={args.device}", f"seed={args.seed}", f"benchmark.batch_size={batch}",
            f"benchmark.seq_len={args.prompt_len}", f"benchmark.new_tokens={args.new_tokens}",
            f"benchmark.warmup={args.warmup}", f"benchmark.iterations={args.reps}", "benchmark.min_duration_s=0",
            f"telemetry.bandwidth_array_gb={args.bandwidth_gb}",
            f"telemetry.bandwidth_cache_dir={args.bandwidth_dir / f'job{job}'}"]


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
    gc.collect()
    return CliRun(cli_command([*overrides, "tracking=off"]), dict(row.metrics), tracker.tags, out.getvalue(),
                  row.batch_size, row.runtime)


def cli_plan(cfg, ctx):
    """What ``task=bench`` prepares for ``cfg`` (export, derived graph) before loading it."""
    from ascend_lab.prepare import plan_runtime

    return plan_runtime(cfg, ctx)


@dataclasses.dataclass
class Figure:
    row: str
    batch: int
    ttft_ms: float  # median
    tpot_ms: float  # median
    decode_tokens_s: float  # batch × (new − 1) / mean decode time
    roofline_tokens_s: float | None  # the job's (hf: the ort job's at the same batch)
    gb_s: float | None  # the bandwidth that roofline uses
    step_bytes: float | None  # weights + KV cache a decode step reads (mean over the generation)
    reps: int
    round_index: int = 0  # which run of the same row and batch (--rounds)

    @classmethod
    def of(cls, row: str, batch: int, metrics: dict, round_index: int = 0) -> "Figure":
        """From a job's metrics (task=bench's names)."""
        return cls(row, batch, ttft_ms=metrics["ttft_ms_p50"], tpot_ms=metrics["tpot_ms_p50"],
                   decode_tokens_s=metrics["decode_tokens_s"], roofline_tokens_s=metrics.get("roofline_tokens_s"),
                   gb_s=metrics.get("roofline_read_gb_s", metrics.get("roofline_copy_gb_s")),
                   step_bytes=metrics.get("roofline_step_bytes"), reps=int(metrics["iterations"]),
                   round_index=round_index)

    def roofline_fraction(self) -> float:
        return self.decode_tokens_s / self.roofline_tokens_s if self.roofline_tokens_s else float("nan")


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


def hf_row(cfg, args, torch_device) -> dict[int, dict]:
    """Hugging Face eager generate: per batch, the runner's generation figures of its timed runs."""
    import torch

    from ascend_lab.bench.generation import GenerationResult
    from ascend_lab.bench.scenarios import generation_metrics, make_inputs
    from ascend_lab.models import load_model

    loaded = load_model(cfg.model, cfg.seed, device=torch_device)
    model = loaded.model
    # Plain greedy of exactly max_new_tokens, as the engines decode: no EOS stop and no EOS masking
    # (min_new_tokens would set EOS's logit to -inf, so HF's tokens would differ wherever EOS is the argmax).
    greedy = {"do_sample": False, "num_beams": 1, "eos_token_id": None, "pad_token_id": loaded.tokenizer.pad_token_id}
    out = {}
    for batch in args.batches:
        bench = dataclasses.replace(cfg.benchmark, batch_size=batch)
        ids, mask = make_inputs(bench, batch, model.config.vocab_size, cfg.seed)  # task=bench's inputs
        ids_t = torch.from_numpy(ids).to(torch_device)
        mask_t = torch.from_numpy(mask).to(torch_device)
        runs, e2e_ms = [], []
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
            e2e_ms.append((stamps[-1] - started) * 1e3)
        out[batch] = generation_metrics(runs[args.warmup:], e2e_ms[args.warmup:], batch, ids.shape[1], args.new_tokens)
    del model, loaded
    gc.collect()
    return out


def agreement(args, row: str) -> dict[str, float]:
    """The accuracy measurement (:mod:`ascend_lab.accuracy_measure`) of ``row``'s configuration at batch 1 against
    its reference (:data:`AGREEMENT`): task=accuracy's figures, without its report."""
    from ascend_lab.accuracy_measure import measure

    _, reference = AGREEMENT[row]
    cfg, ctx = compose(args.launch_dir, [*bench_overrides(args, row, 1), f"accuracy.new_tokens={args.agreement_tokens}",
                                         *reference])
    with contextlib.redirect_stdout(io.StringIO()):
        figures = measure(cfg, ctx).aggregate
    gc.collect()
    return {k: figures[k] for k in AGREEMENT_FIGURES}


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
            engine = runtime.engine(ids.shape[1] + bench.new_tokens, spec["kv_capacity"])
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
             # The bandwidth this run's first job measured: the plain loop measures none, so neither does the sweep.
             f"telemetry.bandwidth_cache_dir={args.bandwidth_dir / 'job0'}",
             *[f"benchmark.{k}={v}" for k, v in bench.items()], *args.overrides]
    spec = {"graph": exported.graph, "dims": dataclasses.asdict(exported.dims), "dtype": exported.dtype,
            "batches": batches, "benchmark": bench, "onnx_path": str(onnx_path), "device": args.device,
            "seed": cfg.seed, "kv_capacity": cfg.export.kv_capacity,
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
            if f.roofline_tokens_s:
                key = {"ort": "ort_roofline_fraction", "hf": "hf_roofline_fraction"}.get(row, f"roofline_fraction.{row}")
                ratios[key] = f.roofline_fraction()
            if hf1 is not None and row != "hf":
                ratios[{"ort": "ort_vs_hf", "ort_int8": "int8_vs_hf"}.get(row, f"vs_hf.{row}")] = \
                    f.decode_tokens_s / hf1.decode_tokens_s
        if batch == 8 and (row, 1) in by:
            ratios["ort_b8_vs_b1" if row == "ort" else f"b8_vs_b1.{row}"] = \
                f.decode_tokens_s / by[(row, 1)].decode_tokens_s
    if "ort_int8" in (agree or {}):
        ratios["int8_agreement"] = agree["ort_int8"]["tf_top1_agreement_mean"]
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


def tables(figures: list[Figure], ratios: dict, agree: dict, overhead: dict | None, meta: dict) -> str:
    from ascend_lab.report import format_number, format_table

    rounds = round_counts(figures)
    median_of = representatives(figures)

    def label(f: Figure) -> str:
        count = rounds[(f.row, f.batch)]
        if count == 1:
            return f.row
        return f"{f.row} (round {f.round_index + 1}/{count}{', median' if median_of[(f.row, f.batch)] is f else ''})"

    rows = [(label(f), f.batch, f.decode_tokens_s, f.ttft_ms, f.tpot_ms,
             None if f.step_bytes is None else f.step_bytes / 1e9, f.gb_s, f.roofline_tokens_s,
             100 * f.roofline_fraction() if f.roofline_tokens_s else None) for f in figures]
    parts = [format_table(["row", "batch", "decode tok/s", "TTFT ms", "ms/token", "GB/step (weights + KV)",
                           "bandwidth GB/s", "roofline tok/s", "% roofline"], rows,
                          title=f"decode: {meta['model']} ({meta['dtype']}) on {meta['device']}, prompt "
                                f"{meta['prompt_len']}, {meta['new_tokens']} new tokens, {meta['reps']} timed "
                                f"generation(s) after {meta['warmup']} warm-up (task=bench's figures; hf: over "
                                f"the ort job's roofline)")]
    parts.append(f"bandwidth measured by each job after its decode ({meta['bandwidth']}); load {meta['load_before']} "
                 f"→ {meta['load_after']}")
    if meta.get("ort_command"):
        parts.append(f"ort row = {meta['ort_command']}")
    parts.append(format_table(["ratio", "value", "target", "met"],
                              [(k, format_number(v), *_target_cells(k, v)) for k, v in ratios.items()], title="ratios"))
    if agree:
        parts.append(format_table(["comparison", *AGREEMENT_FIGURES],
                                  [(AGREEMENT[row][0], *(format_number(v[k]) for k in AGREEMENT_FIGURES))
                                   for row, v in agree.items()],
                                  title=f"agreement (ascend_lab.accuracy_measure), {meta['agreement_tokens']} tokens "
                                        "per accuracy.prompts prompt"))
    if overhead:
        parts.append(format_table(["runner", "value", "target", "met"], [
            ("-m sweep 1,4,8 (s)", f"{overhead['sweep_seconds']:.1f}", "", ""),
            ("plain loop (s)", f"{overhead['plain_loop_seconds']:.1f}", "", ""),
            ("sweep / plain", f"{overhead['runner_overhead']:.3f}",
             *_target_cells("runner_overhead", overhead["runner_overhead"])),
            ("--help (s)", f"{overhead['help_seconds']:.2f}", *_target_cells("help_seconds", overhead["help_seconds"])),
        ], title="runner overhead"))
    return "\n\n".join(parts)


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
    from ascend_lab.export import ensure_exported

    load_before = _load()
    first = args.rows[0] if args.rows[0] != "hf" else "ort"
    cfg, ctx = compose(args.launch_dir, bench_overrides(args, "ort", args.batches[0]))
    device = ctx.device
    print(f"model {cfg.model.name} ({cfg.model.dtype}), device {device.torch_device}, batches {args.batches}, "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}, rows {','.join(args.rows)}, load {load_before}",
          flush=True)
    exported = ensure_exported(cfg, ctx)  # the CLI rows find it in the export cache

    figures: list[Figure] = []
    cli_runs: dict[str, list[dict]] = {}
    jobs = itertools.count()

    def record(figure: Figure) -> None:
        figures.append(figure)
        share = f"{100 * figure.roofline_fraction():5.1f} % roofline" if figure.roofline_tokens_s else "no roofline"
        print(f"  {figure.row:>10} batch {figure.batch}: {figure.decode_tokens_s:8.2f} tok/s, TTFT "
              f"{figure.ttft_ms:7.0f} ms, {figure.tpot_ms:7.1f} ms/token, {share}"
              + (f", round {figure.round_index + 1}" if figure.round_index else ""), flush=True)

    for row in [r for r in args.rows if r != "hf"]:
        if row == "ort_int8" and cfg.model.dtype != "float32":
            print(f"ort_int8 skipped: export.quantize=int8 quantises float32 weights (model.dtype={cfg.model.dtype})")
            continue
        print(f"{row}: in-process {cli_command(bench_overrides(args, row, args.batches[0]))} (and the other batches) …",
              flush=True)
        for batch in args.batches:
            for round_index in range(args.rounds if (row, batch) == ("ort", 1) else 1):
                run = run_cli_bench(args.launch_dir, bench_overrides(args, row, batch, next(jobs)))
                cli_runs.setdefault(row, []).append(dataclasses.asdict(run))
                record(Figure.of(row, batch, run.metrics, round_index))
    if "hf" in args.rows:
        print("hf generate …", flush=True)
        ort = representatives(figures)
        for batch, metrics in hf_row(cfg, args, device.torch_device).items():
            figure, peer = Figure.of("hf", batch, metrics), ort.get(("ort", batch))
            if peer is not None:  # the same model and lengths read the same bytes per step
                figure = dataclasses.replace(figure, roofline_tokens_s=peer.roofline_tokens_s, gb_s=peer.gb_s,
                                             step_bytes=peer.step_bytes)
            record(figure)
    agree: dict[str, dict] = {}
    if args.agreement_tokens > 0:
        for row in [r for r in args.rows if r in AGREEMENT and r in cli_runs]:
            print(f"agreement: {AGREEMENT[row][0]} …", flush=True)
            agree[row] = agreement(args, row)

    overhead = None
    if not args.skip_overhead:
        overhead = runner_overhead(cfg, args, exported, cli_plan(cfg, ctx).onnx_path)
    ratios = compute_ratios(figures, agree)
    if overhead:
        ratios["runner_overhead"] = overhead["runner_overhead"]
        ratios["help_seconds"] = overhead["help_seconds"]
    bandwidths = [f.gb_s for f in figures if f.gb_s and f.row != "hf"]
    meta = {"model": cfg.model.name, "dtype": cfg.model.dtype, "device": str(device.torch_device),
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "reps": args.reps, "warmup": args.warmup,
            "agreement_tokens": args.agreement_tokens, "load_before": load_before, "load_after": _load(),
            "host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "bandwidth": (f"{len(bandwidths)} readings, {min(bandwidths):.1f}–{max(bandwidths):.1f} GB/s, median "
                          f"{statistics.median(bandwidths):.1f}" if bandwidths else "none"),
            "ort_command": (cli_command([*bench_overrides(args, first, args.batches[0]), "tracking=off"])
                            if first in cli_runs else None)}
    text = tables(figures, ratios, agree, overhead, meta)
    print("\n" + text)
    results = {"meta": meta, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "figures": [dataclasses.asdict(f) for f in figures], "ratios": ratios,
               "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}, "agreement": agree,
               "overhead": overhead, "cli_runs": cli_runs, "onnx_sha256": exported.sha256,
               "onnx_path": str(exported.onnx_path)}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    if not args.no_track:
        _track(args, results, text, figures)
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _track(args, results: dict, text: str, figures: list[Figure]) -> None:
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
        metrics: dict[str, float] = {}
        rounds = round_counts(figures)
        for f in figures:
            prefix = f"{f.row}.b{f.batch}" + (f".r{f.round_index + 1}" if rounds[(f.row, f.batch)] > 1 else "")
            metrics.update({f"{prefix}.decode_tokens_s": f.decode_tokens_s, f"{prefix}.ttft_ms": f.ttft_ms,
                            f"{prefix}.tpot_ms": f.tpot_ms})
            if f.roofline_tokens_s:
                metrics.update({f"{prefix}.bandwidth_gb_s": f.gb_s, f"{prefix}.roofline_fraction": f.roofline_fraction()})
        metrics.update({f"ratio.{k}": v for k, v in results["ratios"].items()})
        for row, values in results["agreement"].items():
            metrics.update({f"agreement.{row}.{k}": v for k, v in values.items()})
        tracker.log_metrics(metrics)
        tracker.log_text(text, "decode_vs_hf.txt")
        tracker.log_dict(results, "decode_vs_hf.json")
    print(f"logged to MLflow run {tracker.run_id} ({store.uri}, experiment {args.experiment})")


if __name__ == "__main__":
    sys.exit(main())
