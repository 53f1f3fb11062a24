"""task=loadtest: measure an OpenAI-compatible endpoint under concurrent load (:mod:`ascend_lab.loadtest`).

``loadtest.base_url=...`` measures any server (ours, vLLM, vllm-ascend, MindIE); ``loadtest.target=self`` (the
default without a base_url) serves this config first, exactly as task=serve does, on a free 127.0.0.1 port in this
process, measures it and stops it, so one command does both. The figures (vLLM ``bench serve`` definitions) are the
run's metrics; with ``target=self`` the server's own counts and TTFT/ITL are logged beside them (``server_*``).
Sweep it: ``python -m ascend_lab.run -m task=loadtest loadtest.concurrency=1,4,8``; the sweep's parent gets the
throughput-latency table and plot (:mod:`ascend_lab.loadtest.summary`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.errors import AscendLabError, ConfigError
from ascend_lab.loadtest.figures import serving_figures
from ascend_lab.loadtest.generator import LoadPlan, run_load
from ascend_lab.report import format_table

# How long the in-process server may take to start listening once the engine is loaded.
SERVER_START_S = 60.0
SHOWN = ("requests_completed", "requests_failed", "duration_s", "request_throughput_rps",
         "output_throughput_tokens_s", "ttft_ms_mean", "ttft_ms_median", "ttft_ms_p99", "tpot_ms_mean",
         "tpot_ms_median", "tpot_ms_p99", "itl_ms_mean", "itl_ms_median", "itl_ms_p99", "e2el_ms_mean",
         "e2el_ms_median", "e2el_ms_p99", "goodput_rps")


def run(cfg: AppConfig, ctx: JobContext) -> dict[str, float]:
    lt = cfg.loadtest
    if lt.prompts_file is not None:
        _check_prompts_file(ctx.path(lt.prompts_file))
    out_dir = ctx.output_dir / "loadtest"
    ctx.tracker.set_tags({"loadtest.target": lt.resolved_target, "loadtest.client": "evalscope perf"})
    if lt.resolved_target == "self":
        figures = _against_self(cfg, ctx, out_dir)
    else:
        base = _base(lt.base_url)
        if lt.prompts_file is None and lt.tokenizer_path is None:
            raise ConfigError("loadtest.tokenizer_path", None, "random prompts against a url need the served model's "
                                                               "tokenizer folder; set it, or give loadtest.prompts_file")
        model = lt.model or _first_model(base, lt.api_key)
        ctx.tracker.set_tags({"loadtest.target_url": base, "loadtest.model": model})
        figures = _measure(cfg, ctx, base, model, lt.api_key, lt.tokenizer_path, out_dir)
    title = (f"loadtest: {lt.requests} requests, concurrency {lt.concurrency}"
             + (f", rate {lt.rate:g}/s" if lt.rate else "") + f", {lt.output_tokens} output tokens each")
    print(format_table(["figure", "value"], [(k, figures[k]) for k in SHOWN if k in figures],
                       title=title))
    return figures


def _against_self(cfg: AppConfig, ctx: JobContext, out_dir: Path) -> dict[str, float]:
    from ascend_lab.serve.server import api_key_of, serving

    # The server gets the loopback and a free port whatever serve.host/port say (the load is local).
    cfg = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, host="127.0.0.1", port=0))
    lt = cfg.loadtest
    with serving(cfg, ctx) as server:
        tokenizer_path = lt.tokenizer_path
        if tokenizer_path is None:  # the served model's own, for random prompts and token counts
            tokenizer_path = str(out_dir / "tokenizer")
            server.model.tokenizer.save_pretrained(tokenizer_path)
        thread = threading.Thread(target=server.run, name="ascend_lab-loadtest-server", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + SERVER_START_S
            while not server.server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise AscendLabError(f"the server did not start listening on {server.url}")
                time.sleep(0.05)
            ctx.tracker.set_tags({"loadtest.target_url": server.url, "loadtest.model": server.model.name})
            figures = _measure(cfg, ctx, server.url, server.model.name, api_key_of(cfg.serve), tokenizer_path,
                               out_dir)
        finally:
            server.stop()
            thread.join(cfg.serve.drain_s + 10)
        served = {k: v for k, v in server.metrics.snapshot().items() if k.startswith("server_")}
        served["load_seconds"] = server.load_seconds
    ctx.tracker.log_metrics(served)
    return {**figures, **served}


def _measure(cfg: AppConfig, ctx: JobContext, base: str, model: str, api_key: str | None,
             tokenizer_path: str | None, out_dir: Path) -> dict[str, float]:
    lt = cfg.loadtest
    chat = lt.api == "chat"
    plan = LoadPlan(url=f"{base}/v1/{'chat/completions' if chat else 'completions'}", model=model,
                    concurrency=lt.concurrency, requests=lt.requests, output_tokens=lt.output_tokens,
                    input_tokens=lt.input_tokens, tokenizer_path=str(ctx.path(tokenizer_path)) if tokenizer_path
                    else None, prompts_file=str(ctx.path(lt.prompts_file)) if lt.prompts_file else None,
                    rate=lt.rate, api_key=api_key, seed=lt.seed, chat=chat)
    records, log_path = run_load(plan, out_dir, lt.timeout_s)
    ctx.tracker.log_artifact(log_path, "loadtest")
    figures = serving_figures(records, lt.slos)
    ctx.tracker.log_metrics(figures)
    if not figures["requests_completed"]:
        raise AscendLabError(f"none of the {len(records)} requests to {plan.url} succeeded; see {log_path}")
    return figures


def _base(url: str) -> str:
    base = url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _first_model(base: str, api_key: str | None) -> str:
    request = urllib.request.Request(f"{base}/v1/models",
                                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data = json.loads(response.read().decode("utf-8"))["data"]
        return str(data[0]["id"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError) as exc:
        raise ConfigError("loadtest.base_url", base, f"cannot list its models at {base}/v1/models ({exc}); check "
                                                     "that the server is up, or set loadtest.model") from None


def _check_prompts_file(path: Path) -> None:
    if not path.is_file():
        raise ConfigError("loadtest.prompts_file", str(path), "no such file; give a UTF-8 text file, one prompt a line")
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as exc:
        raise ConfigError("loadtest.prompts_file", str(path), f"is not UTF-8 ({exc.reason} at byte {exc.start}); "
                                                              "save it as UTF-8") from None
    if not lines:
        raise ConfigError("loadtest.prompts_file", str(path), "has no prompt (one prompt a line)")
