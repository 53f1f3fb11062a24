"""Running the API: the engine opened, its scheduler, the app on a bound loopback socket, uvicorn, and the figures
logged to the job's MLflow run while it serves and once more at the end.

:func:`serving` is shared by task=serve (uvicorn in the main thread, which takes SIGTERM/Ctrl-C) and
task=loadtest loadtest.target=self (uvicorn in a thread, stopped when the load run ends).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import uvicorn

from ascend_lab.config.serve import API_KEY_ENV
from ascend_lab.serve.app import ServedModel, build_app, count_requests
from ascend_lab.serve.engine_host import open_for_serving
from ascend_lab.serve.metrics import ServerMetrics
from ascend_lab.serve.scheduler import Scheduler

log = logging.getLogger(__name__)

# Seconds before serve.drain_s runs out at which requests still in flight are ended (see serving()).
DRAIN_MARGIN_S = 1.0


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT it handled is not raised again once it has shut down (uvicorn
    re-raises it so the default handler ends the process; the job still has to close its run)."""

    def __init__(self, config: uvicorn.Config, on_stop) -> None:
        super().__init__(config)
        self.on_stop = on_stop
        self.on_started = None  # called once listening (and, in the main thread, handling SIGTERM/SIGINT)
        self.signals: list[str] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    def handle_exit(self, sig, frame) -> None:
        self.signals.append(signal.Signals(sig).name)
        self.on_stop()
        super().handle_exit(sig, frame)


@dataclass
class Serving:
    server: _Server
    sock: socket.socket
    url: str
    scheduler: Scheduler
    metrics: ServerMetrics
    model: ServedModel
    load_seconds: float
    runtime: str

    def run(self, on_started=None) -> None:
        """Serve until stopped (a signal, or :meth:`stop` from another thread); ``on_started`` is called once the
        server listens."""
        self.server.on_started = on_started
        self.server.run(sockets=[self.sock])

    def stop(self) -> None:
        self.server.on_stop()
        self.server.should_exit = True


def api_key_of(serve_cfg) -> str | None:
    return serve_cfg.api_key or os.environ.get(API_KEY_ENV) or None


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        from ascend_lab.errors import ConfigError

        raise ConfigError("serve.port", port, f"cannot listen on {host}:{port} ({exc.strerror}); pick another port "
                                              "(serve.port=0: a free one)") from None
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def serving(cfg, ctx) -> Iterator[Serving]:
    """The server, ready to :meth:`Serving.run`; everything it holds is released on exit."""
    s = cfg.serve
    with open_for_serving(cfg, ctx) as served:
        metrics = ServerMetrics()
        scheduler = Scheduler(served.runtime, served.kv_capacity, s.max_batch, s.queue_size,
                              metrics)
        sock = None
        try:
            model = ServedModel(s.model_name or cfg.model.name, served.tokenizer,
                                served.runtime.contract.dims.vocab_size, served.max_positions)
            app = build_app(scheduler, model, metrics, api_key_of(s), s.default_max_tokens, s.retry_after_s)

            def stop_taking() -> None:
                if app.state.draining:
                    return
                app.state.draining = True
                scheduler.stop_taking()
                # Requests still running shortly before uvicorn's own deadline end with finish reason "abort" (a
                # last chunk and [DONE]) rather than a connection cut mid-stream.
                timer = threading.Timer(max(s.drain_s - DRAIN_MARGIN_S, s.drain_s / 2), scheduler.cancel_all)
                timer.daemon = True
                timer.start()

            sock = bind(s.host, s.port)
            host, port = sock.getsockname()[:2]
            config = uvicorn.Config(count_requests(app, metrics), lifespan="off", timeout_graceful_shutdown=s.drain_s,
                                    log_level="info" if s.log_requests else "warning", access_log=s.log_requests)
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
            ctx.tracker.set_tags({"serve.url": url, "serve.scheduling": scheduler.mode, "serve.model": model.name})
            yield Serving(_Server(config, stop_taking), sock, url, scheduler, metrics, model, served.load_seconds,
                          served.plan.name)
        finally:
            scheduler.close()
            if sock is not None:
                sock.close()


@contextlib.contextmanager
def logging_figures(tracker, metrics: ServerMetrics, interval_s: float, extra: dict[str, float]) -> Iterator[None]:
    """The server's figures logged every ``interval_s`` while the block runs, and once more when it ends."""
    stop = threading.Event()
    started = time.perf_counter()

    def figures() -> dict[str, float]:
        return {**extra, **metrics.snapshot(), "serve_seconds": time.perf_counter() - started}

    steps = [0]  # MLflow shows a metric's value at its highest step: the final one comes last

    def loop() -> None:
        while not stop.wait(interval_s):
            steps[0] += 1
            try:
                tracker.log_metrics(figures(), step=steps[0])
            except Exception as exc:  # a tracking hiccup must not stop the server
                log.warning("logging the server's figures failed: %s", exc)

    thread = threading.Thread(target=loop, name="ascend_lab-serve-metrics", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        tracker.log_metrics(figures(), step=steps[0] + 1)
