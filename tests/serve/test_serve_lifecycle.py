"""A server's end: SIGTERM while requests stream (each ends cleanly, the run is FINISHED, exit 0), and runtime=acl on
the CANN stand-ins (batches in turn on the compiled batch; every pyACL resource released: the leak report is empty)."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from conftest import all_runs, cli_env, stand_in_env
from serve_helpers import API_KEY, ServerProcess, call, stream, stream_text

MODEL = "tiny_qwen"


def test_sigterm_mid_load_ends_every_stream_cleanly_and_the_run_finished(tmp_path):
    env = {**cli_env(), "ASCEND_LAB_API_KEY": API_KEY}
    server = ServerProcess(tmp_path, "runtime=torch", "serve.max_batch=2", "serve.drain_s=3", "telemetry=off", env=env)
    try:
        body = {"model": MODEL, "prompt": "drain", "max_tokens": 400, "ignore_eos": True, "stream": True}
        results: list = [None] * 4
        started = threading.Barrier(len(results) + 1, timeout=120)

        def client(i: int) -> None:
            try:
                started.wait()
                results[i] = stream(server.url, "/v1/completions", body, timeout=120)
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
                results[i] = exc

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(results))]
        for thread in threads:
            thread.start()
        started.wait()
        # two decode, two wait: stop the server only once all four are admitted (a request still connecting when
        # SIGTERM lands is refused by the closing socket, which is not what this test is about)
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            metrics = _metrics(server.url)
            if "running_batch 2.0" in metrics and "queue_depth 2.0" in metrics:
                break
            time.sleep(0.05)
        os.kill(server.proc.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(60)
        code = server.stop()
    finally:
        server.kill()
    assert code == 0, server.output[-3000:]
    finishes = []
    for events in results:
        assert isinstance(events, list), events
        _, chunks = stream_text(events, chat=False)  # ends with [DONE], every chunk valid JSON
        finishes.append(chunks[-1]["choices"][0]["finish_reason"])
    assert set(finishes) <= {"length", "abort"}, finishes
    _, runs = all_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.tags["serve.stopped_by"] == "SIGTERM"


def _metrics(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        return response.read().decode()


@pytest.mark.slow
def test_acl_serves_batches_in_turn_and_releases_everything(tmp_path, compose, export_cache):
    from ascend_lab.config import validate
    from ascend_lab.context import JobContext
    from ascend_lab.export import ensure_exported
    from ascend_lab.tracking import Tracker

    # The graph the .om is compiled from is exported here, into this worker's cache: the server finds it there
    # (its own work is the compile, the load and the serving).
    cfg = validate(compose("task=serve", "runtime=acl", export_cache))
    ensure_exported(cfg, JobContext(cfg, Tracker(), tmp_path, tmp_path), dtype=cfg.atc.export_dtype)
    leaks = tmp_path / "leaks.json"
    env = {**stand_in_env(leaks_file=leaks), "ASCEND_LAB_API_KEY": API_KEY}
    server = ServerProcess(tmp_path, "runtime=acl", "serve.max_batch=2", "telemetry=off", export_cache, env=env)
    try:
        assert "batches in turn" in server.output
        outs: list = [None] * 3

        def client(i: int) -> None:
            outs[i] = call(server.url, "/v1/completions", {"model": MODEL, "prompt": f"请求{i}", "max_tokens": 6,
                                                           "ignore_eos": True})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(outs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert [o[0] for o in outs] == [200, 200, 200]
        assert all(o[1]["choices"][0]["finish_reason"] == "length" for o in outs)
        events = stream(server.url, "/v1/chat/completions", {"model": MODEL, "max_tokens": 8, "ignore_eos": True,
                                                            "stream": True, "messages": [{"role": "user",
                                                                                          "content": "你好,昇腾"}]})
        stream_text(events, chat=True)
        assert call(server.url, "/v1/completions", raw=b"{oops")[0] == 400
        code = server.stop()
    finally:
        server.kill()
    assert code == 0, server.output[-3000:]
    assert json.loads(leaks.read_text())["leaks"] == []
    _, runs = all_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED"] and runs[0].data.tags["runtime"] == "acl"
