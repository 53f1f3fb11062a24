"""task=serve: the configured model behind an OpenAI-compatible HTTP API (:mod:`ascend_lab.serve`).

Prepares and loads the runtime as task=bench does, then serves on ``serve.host:serve.port`` until SIGTERM or Ctrl-C:
it stops taking requests, lets those in flight finish for up to ``serve.drain_s`` (then cancels them), releases the
runtime and ends the run FINISHED with the server's figures (also logged every ``serve.metrics_interval_s``).
"""

from __future__ import annotations

from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.serve.server import api_key_of, logging_figures, serving
from ascend_lab.text import weights_note


def run(cfg: AppConfig, ctx: JobContext) -> dict[str, float]:
    with serving(cfg, ctx) as server:
        scheduler = server.scheduler
        note = weights_note(cfg.model.weights)
        auth = ' -H "Authorization: Bearer $ASCEND_LAB_API_KEY"' if api_key_of(cfg.serve) else ""

        def announce() -> None:  # once listening, with SIGTERM/Ctrl-C handled: clients may start
            print(f"serving {server.model.name} on {server.url} (runtime {server.runtime}, {scheduler.max_batch} "
                  f"rows, {scheduler.mode}; Ctrl-C or SIGTERM stops)", flush=True)
            if note:
                print(note)
            print(f"  curl -N {server.url}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{server.model.name}\", \"messages\": [{{\"role\": \"user\", \"content\": "
                  f"\"你好\"}}], \"stream\": true}}'", flush=True)

        with logging_figures(ctx.tracker, server.metrics, cfg.serve.metrics_interval_s,
                             {"load_seconds": server.load_seconds}):
            server.run(on_started=announce)
        if server.server.signals:
            ctx.tracker.set_tags({"serve.stopped_by": ",".join(dict.fromkeys(server.server.signals))})
        figures = server.metrics.snapshot()
    if scheduler.error is not None:
        from ascend_lab.errors import AscendLabError

        raise AscendLabError(f"the serving engine failed: {scheduler.error}")
    print(f"stopped: {int(figures.get('requests_total', 0))} requests, "
          f"{int(figures.get('generation_tokens_total', 0))} tokens generated")
    return figures
