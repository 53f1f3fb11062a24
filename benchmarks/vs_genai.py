#!/usr/bin/env python
"""Our CLI's onnxruntime path against Microsoft's onnxruntime-genai, side by side on one model folder, at the
same thread count, in alternating rounds.

    pip install -e '.[peers]'                                   # onnxruntime-genai
    python benchmarks/vs_genai.py                               # Qwen2.5-0.5B shapes, random weights, 2 threads
    python benchmarks/vs_genai.py --rounds 5 --batches 1,4      # more rounds, batch 4 rows too
    python benchmarks/vs_genai.py --smoke                       # tiny_qwen, 1 round, few tokens (the test's run)

What runs:

- **One model folder.** Our model code (:func:`ascend_lab.models.load_model`, seeded random weights for
  ``--model``, default ``model=qwen2_5_0_5b_instruct model.weights=random``) writes a Hugging Face Qwen2 folder
  (``save_pretrained``). The peer's builder turns it into its fp32 and int4 models
  (``python -m onnxruntime_genai.models.builder -i <folder> -o <out> -p fp32|int4 -e cpu``); our side exports the
  same seeded weights through its own cache (``task=bench`` composes the same model config and seed). Everything
  is built once and cached under ``<launch dir>/outputs/vs_genai/``.
- **Ours** is the CLI: ``python -m ascend_lab.run task=bench <model> runtime=onnxruntime
  runtime.intra_op_threads=<threads> benchmark.scenario=generate ...`` (``export.quantize=int4`` for the int4 rows),
  composed and run in process as ``decode_vs_hf.py`` does, with ``telemetry.roofline=false`` (the bandwidth
  probe's array would count in the peak RSS).
- **The peer** is its own generator loop: ``og.Model``, ``og.GeneratorParams`` (greedy, ``min_length`` =
  ``max_length`` so both sides make exactly the same number of tokens), ``og.Generator``, ``append_tokens``,
  ``generate_next_token``; its ``genai_config.json`` gets ``session_options.intra_op_num_threads`` = ours.
- Both sides decode the same token ids (``task=bench``'s seeded random prompts, :func:`make_inputs`), each row in
  a fresh subprocess so its peak RSS (the kernel's ``VmHWM``) is its own; within a round the side that goes first
  alternates. The load average is read before and after every round.

Figures share ``task=bench``'s definitions: TTFT = prompt in → first token out (median over the timed
generations); decode tokens/s = batch × (new − 1) / mean time of the steps after the first token. The ratios are of
medians across rounds: decode ours/peer, TTFT peer/ours, peak RSS ours/peer. The greedy tokens of the two fp32
models are compared on the first 16 tokens at each batch (reported, not asserted: with random weights a
near-tie can flip a token).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DEFAULT_MODEL = "model=qwen2_5_0_5b_instruct model.weights=random"
SMOKE_MODEL = "model=tiny_qwen"
PRECISIONS = ("fp32", "int4")
OUR_QUANTIZE = {"fp32": "none", "int4": "int4"}
AGREEMENT_TOKENS = 16
# Ratio → (comparison, target): the "done when".
TARGETS = {
    "decode.fp32.b1": ("≥", 1.0), "decode.fp32.b1.long": ("≥", 1.0), "decode.int4.b1": ("≥", 1.0),
    "ttft.fp32.b1": ("≥", 1.0), "rss.int4.b1": ("≤", 1.1),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"Hydra overrides naming the model (default: {DEFAULT_MODEL!r}; "
                                                 f"--smoke: {SMOKE_MODEL!r})")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads on both sides")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", default="1", help="comma-separated batch sizes of the short-prompt rows")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--long-context", type=int, default=1024,
                   help="prompt length of the long-context decode row (fp32, batch 1); 0: no such row")
    p.add_argument("--long-new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1, help="untimed generations per row")
    p.add_argument("--reps", type=int, default=2, help="timed generations per row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny_qwen, 1 round, 8 tokens, no long row")
    p.add_argument("--launch-dir", default=None, help="where the caches live (default: the current directory)")
    p.add_argument("--json", dest="json_out", default=None, help="also write every figure here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one side, one row
    args = p.parse_args(argv)
    if args.worker:
        return args
    if args.smoke:
        args.model = args.model or SMOKE_MODEL
        args.rounds, args.new_tokens, args.long_context, args.reps, args.prompt_len = 1, 8, 0, 1, 16
        args.batches = "1,2"
    args.model = (args.model or DEFAULT_MODEL).split()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.precisions = [x for x in args.precisions.split(",") if x]
    if set(args.precisions) - set(PRECISIONS):
        p.error(f"--precisions: choose from {', '.join(PRECISIONS)}")
    if args.new_tokens < 2 or args.long_new_tokens < 2:
        p.error("--new-tokens and --long-new-tokens must be ≥ 2 (decode is timed over new - 1 steps)")
    if args.rounds < 1 or args.reps < 1 or args.threads < 1:
        p.error("--rounds, --reps and --threads must be ≥ 1")
    args.launch_dir = Path(args.launch_dir or os.getcwd()).resolve()
    return args


@dataclass(frozen=True)
class Row:
    precision: str
    batch: int
    prompt_len: int
    new_tokens: int

    @property
    def key(self) -> str:
        return f"{self.precision}.b{self.batch}" + (".long" if self.prompt_len > 64 else "")


def rows_of(args) -> list[Row]:
    rows = [Row(p, b, args.prompt_len, args.new_tokens) for b in args.batches for p in args.precisions]
    if args.long_context:
        rows.append(Row("fp32", 1, args.long_context, args.long_new_tokens))
    return rows


# ---------------------------------------------------------------------------------------------
# The model folder and the peer's models (built once, cached)


def compose_cfg(args, extra: list[str] = ()):
    from decode_vs_hf import compose

    return compose(args.launch_dir, ["task=bench", *args.model, f"seed={args.seed}", *extra])


def cache_root(args, cfg) -> Path:
    return args.launch_dir / "outputs" / "vs_genai" / f"{cfg.model.name}-seed{args.seed}"


def hf_folder(args, cfg) -> Path:
    """Our model code's seeded weights as a Hugging Face folder (config, safetensors, tokenizer)."""
    folder = cache_root(args, cfg) / "hf"
    if (folder / "config.json").is_file():
        return folder
    from ascend_lab.models import load_model

    tmp = folder.with_name(folder.name + ".tmp")
    loaded = load_model(cfg.model, args.seed)
    loaded.model.save_pretrained(tmp)
    loaded.tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def peer_model(args, cfg, precision: str) -> Path:
    """The peer's model of ``precision`` built by its own builder from :func:`hf_folder`, with our thread count."""
    out = cache_root(args, cfg) / f"genai-{precision}"
    if not (out / "genai_config.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        run_peer_builder(["-i", str(hf_folder(args, cfg)), "-o", str(tmp), "-p", precision, "-e", "cpu",
                          "-c", str(tmp / "cache")])
        shutil.rmtree(tmp / "cache", ignore_errors=True)  # the builder's staging of the HF weights
        tmp.rename(out)
    config_path = out / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = args.threads
    config_path.write_text(json.dumps(config, indent=4))
    return out


def run_peer_builder(argv: list[str]) -> None:
    """``python -m onnxruntime_genai.models.builder <argv>``, run in this process: its imports (torch,
    transformers) are paid once for every precision, and :func:`hf_folder` has paid them already."""
    import runpy

    print("peer build: -m onnxruntime_genai.models.builder", " ".join(argv), flush=True)
    saved, sys.argv = sys.argv, ["onnxruntime_genai.models.builder", *argv]
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise SystemExit(f"the peer's builder failed ({stop.code}):\n{console.getvalue()[-3000:]}") from None
    except Exception as error:
        raise SystemExit(f"the peer's builder failed: {error!r}\n{console.getvalue()[-3000:]}") from error
    finally:
        sys.argv = saved


def prepare_ours(args, row: Row) -> None:
    """What our side's ``task=bench`` job of ``row`` prepares before it loads (the export, the derived graph), done
    here so that the workers find it in the cache."""
    from decode_vs_hf import cli_plan, compose

    cli_plan(*compose(args.launch_dir, our_overrides(args, row)))


def our_overrides(args, row: Row, reps: int | None = None) -> list[str]:
    """The ``task=bench`` overrides of our side of ``row`` (the CLI command, tracking aside)."""
    capacity = max(1024, -(-(row.prompt_len + row.new_tokens) // 1024) * 1024)
    return ["task=bench", *args.model, "runtime=onnxruntime", f"runtime.intra_op_threads={args.threads}",
            f"export.quantize={OUR_QUANTIZE[row.precision]}", f"export.kv_capacity={capacity}",
            "benchmark.scenario=generate", "device=cpu", f"seed={args.seed}", f"benchmark.batch_size={row.batch}",
            f"benchmark.seq_len={row.prompt_len}", f"benchmark.new_tokens={row.new_tokens}",
            f"benchmark.warmup={args.warmup}", f"benchmark.iterations={reps or args.reps}",
            "benchmark.min_duration_s=0", "telemetry.roofline=false"]


def prompt_ids(args, row: Row, vocab_size: int) -> np.ndarray:
    """task=bench's prompts for ``row`` (the same seeded ids on both sides)."""
    from ascend_lab.bench.scenarios import make_inputs
    from ascend_lab.config.benchmark import BenchmarkConfig

    bench = BenchmarkConfig(batch_size=row.batch, seq_len=row.prompt_len, new_tokens=row.new_tokens)
    return make_inputs(bench, row.batch, vocab_size, args.seed)[0]


# ---------------------------------------------------------------------------------------------
# Workers: one side, one row, in a fresh process


def peer_worker(spec: dict) -> dict:
    import onnxruntime_genai as og

    ids = np.load(spec["ids"])
    batch, prompt_len = ids.shape
    new = spec["new_tokens"]
    model = og.Model(spec["model"])

    def generate() -> tuple[float, float, np.ndarray]:
        params = og.GeneratorParams(model)
        length = prompt_len + new
        params.set_search_options(do_sample=False, max_length=length, min_length=length, batch_size=batch)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new - 1):
            generator.generate_next_token()
        end = time.perf_counter()
        tokens = np.stack([np.asarray(generator.get_sequence(b))[prompt_len:] for b in range(batch)])
        return (first - start) * 1e3, end - first, tokens

    for _ in range(spec["warmup"]):
        generate()
    timed = [generate() for _ in range(spec["reps"])]
    return {"ttft_ms": statistics.median(t[0] for t in timed),
            "decode_tokens_s": batch * (new - 1) / statistics.mean(t[1] for t in timed),
            "tokens": timed[0][2].tolist(), "threads": spec["threads"]}


def our_worker(spec: dict) -> dict:
    from decode_vs_hf import run_cli_bench

    run = run_cli_bench(Path(spec["launch_dir"]), spec["overrides"])
    figures = {"ttft_ms": run.metrics["ttft_ms_p50"], "decode_tokens_s": run.metrics["decode_tokens_s"],
               "threads": int(run.metrics["threads"])}
    # The CPU onnxruntime path loads no torch (its libraries alone are about half a gigabyte resident).
    figures["torch_loaded"] = "torch" in sys.modules
    if spec.get("tokens"):
        figures["tokens"] = our_tokens(spec)
    return figures


def our_tokens(spec: dict) -> list:
    """Our greedy tokens for the worker's prompts (the runtime and engine task=bench times)."""
    from decode_vs_hf import compose

    from ascend_lab.bench.generation import greedy_generate
    from ascend_lab.prepare import open_engine

    cfg, ctx = compose(Path(spec["launch_dir"]), spec["overrides"])
    ids = np.load(spec["ids"])
    with open_engine(cfg, ctx) as loaded:
        engine = loaded.engine(ids.shape[1] + spec["new_tokens"])
        return greedy_generate(engine, ids, np.ones_like(ids), spec["new_tokens"], loaded.timer).tokens.tolist()


def run_worker(spec: dict) -> dict:
    """``spec`` in a fresh interpreter; its figures plus its peak RSS."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=spec["launch_dir"],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{spec['side']} worker failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# Rounds, ratios, report


def ratio_table(results: dict, rows: list[Row]) -> dict[str, float]:
    """Ratios of medians across rounds per row: decode ours/peer, TTFT peer/ours, peak RSS ours/peer."""
    ratios = {}
    for row in rows:
        ours, peer = results[row.key]["ours"], results[row.key]["peer"]

        def med(side, name):
            return statistics.median(r[name] for r in side)

        ratios[f"decode.{row.key}"] = med(ours, "decode_tokens_s") / med(peer, "decode_tokens_s")
        ratios[f"ttft.{row.key}"] = med(peer, "ttft_ms") / med(ours, "ttft_ms")
        ratios[f"rss.{row.key}"] = med(ours, "peak_rss_mb") / med(peer, "peak_rss_mb")
    return ratios


def verdict(key: str, value: float) -> str:
    target = TARGETS.get(key)
    if target is None:
        return ""
    op, bound = target
    met = value >= bound if op == "≥" else value <= bound
    return f"  (target {op} {bound:g}: {'met' if met else 'NOT met'})"


def agreement(ours: list, peer: list) -> tuple[int, int]:
    n = min(AGREEMENT_TOKENS, np.shape(ours)[1], np.shape(peer)[1])
    a, b = np.asarray(ours)[:, :n], np.asarray(peer)[:, :n]
    return int((a == b).sum()), int(a.size)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        from ascend_lab.bench.memory import peak_rss_mb

        figures = peer_worker(spec) if spec["side"] == "peer" else our_worker(spec)
        # The kernel's high-water mark of this process (ru_maxrss would carry the parent's over exec).
        figures["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(figures))
        return 0
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        raise SystemExit("onnxruntime-genai is not installed: pip install -e '.[peers]'") from None
    cfg, _ = compose_cfg(args)
    rows = rows_of(args)
    work = cache_root(args, cfg)
    work.mkdir(parents=True, exist_ok=True)
    from ascend_lab.telemetry.environment import thp_mode

    # Where the weights land in 4 KiB pages (THP madvise: onnxruntime asks for no huge pages) a decode step's speed
    # moves with how the process's memory happens to lie, on both sides; benchmarks/README.md advises `always`.
    print(f"vs onnxruntime-genai: {' '.join(args.model)}, seed {args.seed}, {args.threads} threads both sides, "
          f"{args.rounds} round(s), {args.warmup} warm-up + {args.reps} timed generation(s) per row, "
          f"transparent huge pages: {thp_mode() or 'none'}", flush=True)
    models = {p: peer_model(args, cfg, p) for p in {r.precision for r in rows}}
    vocab = json.loads((hf_folder(args, cfg) / "config.json").read_text())["vocab_size"]
    ids_files = {}
    for row in rows:
        ids_files[row.batch, row.prompt_len] = work / f"ids-{row.batch}x{row.prompt_len}.npy"
        np.save(ids_files[row.batch, row.prompt_len], prompt_ids(args, row, vocab))

    def spec(side: str, row: Row, tokens: bool = False, reps: int | None = None) -> dict:
        common = {"side": side, "launch_dir": str(args.launch_dir), "ids": str(ids_files[row.batch, row.prompt_len]),
                  "new_tokens": row.new_tokens, "threads": args.threads, "warmup": args.warmup,
                  "reps": reps or args.reps, "tokens": tokens}
        if side == "peer":
            return {**common, "model": str(models[row.precision])}
        return {**common, "overrides": our_overrides(args, row, reps)}

    # Our exports (and derived graphs) are built here, once, outside every timed round; the agreement check
    # uses the same fp32 prompts at every batch.
    print("preparing our side and checking greedy agreement at fp32 …", flush=True)
    for row in rows:
        prepare_ours(args, row)
    agree = {}
    for row in [r for r in rows if r.precision == "fp32" and r.prompt_len <= 64]:
        ours = run_worker({**spec("ours", row, tokens=True, reps=1), "warmup": 0})
        peer = run_worker({**spec("peer", Row("fp32", row.batch, row.prompt_len, AGREEMENT_TOKENS), reps=1),
                           "warmup": 0})
        agree[row.batch] = agreement(ours["tokens"], peer["tokens"])
    results: dict = {row.key: {"ours": [], "peer": []} for row in rows}
    loads = []
    for r in range(args.rounds):
        before = os.getloadavg()
        for row in rows:
            order = ("ours", "peer") if (r + rows.index(row)) % 2 == 0 else ("peer", "ours")
            for side in order:
                figures = run_worker(spec(side, row))
                figures.pop("tokens", None)
                results[row.key][side].append(figures)
                print(f"round {r + 1} {row.key:<14} {side:>4} ({figures['threads']} threads): "
                      f"decode {figures['decode_tokens_s']:7.2f} tok/s, TTFT {figures['ttft_ms']:7.0f} ms, "
                      f"peak RSS {figures['peak_rss_mb']:6.0f} MB", flush=True)
        after = os.getloadavg()
        loads.append((before, after))
        print(f"round {r + 1}: load average before {before[0]:.2f} {before[1]:.2f}, "
              f"after {after[0]:.2f} {after[1]:.2f}", flush=True)
    ratios = ratio_table(results, rows)
    print(f"\nmedians across {args.rounds} round(s), {args.threads} threads both sides:")
    print(f"{'row':<16}{'side':>6}{'decode tok/s':>14}{'TTFT ms':>10}{'peak RSS MB':>13}{'threads':>9}")
    for row in rows:
        for side in ("ours", "peer"):
            got = results[row.key][side]
            print(f"{row.key:<16}{side:>6}{statistics.median(g['decode_tokens_s'] for g in got):>14.2f}"
                  f"{statistics.median(g['ttft_ms'] for g in got):>10.0f}"
                  f"{statistics.median(g['peak_rss_mb'] for g in got):>13.0f}{got[0]['threads']:>9}")
    print("\nratios of medians (decode ours/peer, TTFT peer/ours, peak RSS ours/peer):")
    for key, value in ratios.items():
        print(f"  {key:<22} {value:6.3f}{verdict(key, value)}")
    for batch, (same, total) in sorted(agree.items()):
        print(f"greedy agreement at fp32, batch {batch}, first {AGREEMENT_TOKENS} tokens: {same}/{total}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows], "results": results, "ratios": ratios,
            "agreement": {str(b): a for b, a in agree.items()}, "load_average": loads,
            "transparent_huge_pages": thp_mode()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
