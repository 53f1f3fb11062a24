"""The load generator: ModelScope's evalscope perf (Apache-2.0), run as a subprocess as its docs show
(``evalscope perf --url ... --parallel N --number M --dataset random``; https://evalscope.readthedocs.io, "Model
Inference Stress Testing"). A subprocess keeps its global RNG seeding and uvloop policy out of this process, and its
client stays off the server's event loop. Its per-request records (``benchmark_data.db``) are read back here and the
figures computed with vLLM's definitions (:mod:`ascend_lab.loadtest.figures`).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ascend_lab.errors import AscendLabError, ToolchainError
from ascend_lab.loadtest.figures import RequestRecord

RECORDS_FILE = "benchmark_data.db"
INSTALL_HINT = "pip install -e '.[loadtest]' (evalscope[perf])"


@dataclass(frozen=True)
class LoadPlan:
    url: str  # the endpoint requests go to (…/v1/completions or …/v1/chat/completions)
    model: str
    concurrency: int
    requests: int
    output_tokens: int
    input_tokens: int
    tokenizer_path: str | None
    prompts_file: str | None
    rate: float | None
    api_key: str | None
    seed: int
    chat: bool


def evalscope_command() -> list[str]:
    """How to start evalscope (its console script beside this Python, else on PATH)."""
    beside = Path(sys.executable).with_name("evalscope")
    found = str(beside) if beside.is_file() else shutil.which("evalscope")
    if found is None:
        raise ToolchainError(f"task=loadtest drives evalscope perf, which is not installed: {INSTALL_HINT}")
    return [found, "perf"]


def command_for(plan: LoadPlan, out_dir: Path) -> list[str]:
    cmd = [*evalscope_command(), "--url", plan.url, "--api", "openai", "--model", plan.model,
           "--parallel", str(plan.concurrency), "--number", str(plan.requests),
           "--max-tokens", str(plan.output_tokens), "--min-tokens", str(plan.output_tokens),
           "--extra-args", json.dumps({"ignore_eos": True}), "--temperature", "0", "--stream",
           "--seed", str(plan.seed), "--outputs-dir", str(out_dir), "--no-timestamp", "--name", "run",
           "--read-timeout", "600", "--connect-timeout", "30"]
    if plan.rate is not None:
        cmd += ["--rate", str(plan.rate)]
    if plan.api_key:
        cmd += ["--api-key", plan.api_key]
    if plan.prompts_file:
        cmd += ["--dataset", "line_by_line", "--dataset-path", plan.prompts_file]
        if plan.tokenizer_path:
            cmd += ["--tokenizer-path", plan.tokenizer_path]
    else:
        cmd += ["--dataset", "random", "--tokenizer-path", str(plan.tokenizer_path),
                "--min-prompt-length", str(plan.input_tokens), "--max-prompt-length", str(plan.input_tokens),
                "--prefix-length", "0"]
        if not plan.chat:  # exact prompt lengths: the ids themselves are sent (/v1/completions takes token ids)
            cmd += ["--tokenize-prompt"]
    return cmd


def run_load(plan: LoadPlan, out_dir: Path, timeout_s: float) -> tuple[list[RequestRecord], Path]:
    """Run one load; returns every request's record and the log file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "evalscope.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MODELSCOPE_OFFLINE": "1"}
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command_for(plan, out_dir), stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AscendLabError(f"the load run did not end within loadtest.timeout_s={timeout_s:g} s; raise it, or "
                                 f"send fewer requests (loadtest.requests). Its log: {log_path}") from None
        except BaseException:
            process.kill()
            process.wait()
            raise
    db = next(out_dir.rglob(RECORDS_FILE), None)
    if code != 0 or db is None:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-15:])
        raise AscendLabError(f"evalscope perf failed (exit {code}); the end of its log ({log_path}):\n{tail}")
    return read_records(db), log_path


def read_records(db: Path) -> list[RequestRecord]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT start_time, completed_time, success, first_chunk_latency, latency, "
                           "completion_tokens, prompt_tokens, inter_token_latencies FROM result").fetchall()
    records = []
    for start, end, success, ttft, latency, out_tokens, in_tokens, itl in rows:
        records.append(RequestRecord(start=float(start or 0.0), end=float(end or start or 0.0), success=bool(success),
                                     ttft=ttft, latency=latency, output_tokens=int(out_tokens or 0),
                                     prompt_tokens=int(in_tokens or 0), itl=tuple(json.loads(itl or "[]"))))
    return records
