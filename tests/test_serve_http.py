"""task=serve as a real process on 127.0.0.1 (tiny_qwen on torch, bearer key from the environment): the OpenAI
endpoints, streaming and usage, stop strings, a Chinese prompt streamed as valid UTF-8, every kind of bad request
answered 4xx while serving goes on, 200 connections against a queue of 32 (429 + Retry-After, no crash), a soak of
500 requests with cancellations and malformed bodies (RSS flat after warm-up), and the run FINISHED at SIGTERM."""

from __future__ import annotations

import asyncio
import json
import random

import psutil
import pytest

from conftest import cli_env
from serve_helpers import API_KEY, ServerProcess, call, stream, stream_text

MODEL = "tiny_qwen"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    launch = tmp_path_factory.mktemp("serve_http")
    env = {**cli_env(), "ASCEND_LAB_API_KEY": API_KEY}
    process = ServerProcess(launch, "runtime=torch", "serve.max_batch=4", "serve.queue_size=32",
                            "serve.metrics_interval_s=1", env=env)
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, process.output[-3000:]
        from conftest import all_runs

        _, runs = all_runs(launch)
        assert [r.info.status for r in runs] == ["FINISHED"]
        assert runs[0].data.tags["serve.stopped_by"] == "SIGTERM" and "requests_total" in runs[0].data.metrics


def test_endpoints_answer_in_openai_shapes(server):
    url = server.url
    assert call(url, "/health", key=None)[0] == 200
    status, models, _ = call(url, "/v1/models")
    assert status == 200 and models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 512
    status, body, _ = call(url, "/v1/completions", {"model": MODEL, "prompt": "hello", "max_tokens": 5,
                                                    "ignore_eos": True})
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}

    events = stream(url, "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 6, "ignore_eos": True, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    pieces, chunks = stream_text(events, chat=True)
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:-1]][-1] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    status, whole, _ = call(url, "/v1/chat/completions", {"model": MODEL, "max_tokens": 6, "ignore_eos": True,
                                                          "messages": [{"role": "user", "content": "hi"}]})
    assert whole["choices"][0]["message"]["content"] == "".join(pieces)  # greedy: streamed = whole

    status, body, _ = call(url, "/v1/models", key=None)
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert call(url, "/v1/models", key="wrong")[0] == 401

    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        text = response.read().decode()
    for family in ("ascend_lab_serve_requests_total", "ascend_lab_serve_queue_depth", "ascend_lab_serve_running_batch",
                   "ascend_lab_serve_time_to_first_token_seconds_bucket", "ascend_lab_serve_inter_token_latency_seconds",
                   "ascend_lab_serve_prompt_tokens_total", "ascend_lab_serve_generation_tokens_total"):
        assert family in text


def test_stop_strings_end_the_text_before_them(server):
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 40, "ignore_eos": True}
    text = call(server.url, "/v1/completions", body)[1]["choices"][0]["text"]
    visible = [i for i, ch in enumerate(text) if ch.isprintable() and i > 2]
    assert visible, text
    stop = text[visible[0]:visible[0] + 1]
    cut = call(server.url, "/v1/completions", {**body, "stop": [stop]})[1]["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[:text.index(stop)]


def test_a_chinese_prompt_streams_valid_utf8_whole_characters(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "用中文介绍昇腾推理服务,谢谢!"}],
            "max_tokens": 48, "ignore_eos": True}
    events = stream(server.url, "/v1/chat/completions", {**body, "stream": True})
    pieces, _ = stream_text(events, chat=True)  # each event decodes as strict UTF-8 JSON
    whole = call(server.url, "/v1/chat/completions", body)[1]["choices"][0]["message"]["content"]
    assert "".join(pieces) == whole
    # a character whose bytes straddle two events would show as U+FFFD at a piece's end and start
    assert not any(p.endswith("\ufffd") and q.startswith("\ufffd") for p, q in zip(pieces, pieces[1:]))


def _counter(url: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    import http.client
    import time

    before = _counter(server.url, "ascend_lab_serve_generation_tokens_total")
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.request("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": "bye", "max_tokens": 500, "ignore_eos": True, "stream": True}),
        {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    connection.close()  # gone after the first chunk
    deadline = time.monotonic() + 30
    while _counter(server.url, "ascend_lab_serve_running_batch") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    generated = _counter(server.url, "ascend_lab_serve_generation_tokens_total") - before
    assert _counter(server.url, "ascend_lab_serve_running_batch") == 0 and generated < 500


BAD_BODIES = [
    (b"{not json", 400),
    (json.dumps({"model": MODEL, "prompt": "", "max_tokens": 4}).encode(), 400),
    (json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 0}).encode(), 400),
    (json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 100000}).encode(), 400),
    (json.dumps({"model": "gpt-9", "prompt": "hi"}).encode(), 404),
    (json.dumps({"model": MODEL, "prompt": "长" * 400}).encode(), 400),  # 1200 byte tokens > 512 positions
    (json.dumps({"model": MODEL, "prompt": "hi", "temperature": "hot"}).encode(), 400),
    (json.dumps({"model": MODEL, "messages": []}).encode(), 400),
]


def test_bad_requests_get_4xx_with_openai_error_bodies_and_serving_goes_on(server):
    for raw, expected in BAD_BODIES:
        path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
        status, body, _ = call(server.url, path, raw=raw)
        assert status == expected, (raw, body)
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    assert call(server.url, "/v1/completions", {"model": MODEL, "prompt": "ok", "max_tokens": 2})[0] == 200


async def _post(session, url, body, cancel_after_chunks=None, raw=None):
    """(status, Retry-After, finish reason or None); a cancelled stream closes after that many chunks."""
    import aiohttp

    data = raw if raw is not None else json.dumps(body).encode()
    async with session.post(url + "/v1/completions", data=data,
                            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                            timeout=aiohttp.ClientTimeout(total=120)) as response:
        if response.status != 200:
            await response.read()
            return response.status, response.headers.get("Retry-After"), None
        if not body or not body.get("stream"):
            return 200, None, (await response.json())["choices"][0]["finish_reason"]
        finish, seen = None, 0
        async for line in response.content:
            if line.startswith(b"data: {"):
                seen += 1
                chunk = json.loads(line[6:])
                finish = chunk["choices"][0]["finish_reason"] if chunk["choices"] else finish
                if cancel_after_chunks is not None and seen >= cancel_after_chunks:
                    return 200, None, "cancelled"
        return 200, None, finish


async def _many(url, bodies, concurrency):
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(args):
            async with limit:
                return await _post(session, url, *args)

        return await asyncio.gather(*(one(args) for args in bodies))


def test_200_connections_against_a_queue_of_32_get_429s_and_no_crash(server):
    body = {"model": MODEL, "prompt": "load", "max_tokens": 48, "ignore_eos": True}
    results = asyncio.run(_many(server.url, [(body,)] * 200, concurrency=200))
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) >= 36
    assert all(after == "1" for code, after, _ in results if code == 429)
    assert all(finish == "length" for code, _, finish in results if code == 200)
    assert call(server.url, "/health", key=None)[0] == 200


def test_soak_500_requests_with_cancellations_and_malformed_bodies(server):
    rng = random.Random(20)
    good = {"model": MODEL, "prompt": "soak 测试", "max_tokens": 4, "ignore_eos": True}

    def batch(n):
        jobs = []
        for _ in range(n):
            roll = rng.random()
            if roll < 0.10:
                jobs.append(("bad", (None, None, BAD_BODIES[rng.randrange(len(BAD_BODIES))][0])))
            elif roll < 0.25:
                jobs.append(("cancel", ({**good, "max_tokens": 64, "stream": True}, 1)))
            else:
                jobs.append(("good", ({**good, "stream": rng.random() < 0.5},)))
        return jobs

    process = psutil.Process(server.proc.pid)
    warm = batch(100)
    asyncio.run(_many(server.url, [args for _, args in warm], concurrency=16))
    rss_warm = process.memory_info().rss
    jobs = batch(400)
    results = asyncio.run(_many(server.url, [args for _, args in jobs], concurrency=16))
    for (kind, _), (code, _, finish) in zip(jobs, results):
        if kind == "bad":
            assert 400 <= code < 500
        elif kind == "good":
            assert (code, finish) == (200, "length")
        else:
            assert (code, finish) == (200, "cancelled")
    status, _, _ = call(server.url, "/health", key=None)
    assert status == 200
    assert process.memory_info().rss <= rss_warm * 1.05, (rss_warm, process.memory_info().rss)


@pytest.mark.slow
def test_loadtest_against_a_base_url_with_a_chinese_prompts_file(server, run_cli, tmp_path, mlflow_runs):
    """task=loadtest measuring a server it did not start (here ours; vLLM's is driven the same way)."""
    prompts = tmp_path / "prompts_zh.txt"
    prompts.write_text("介绍一下昇腾 NPU\n如何部署推理服务?\n用一句话总结\n", encoding="utf-8")
    done = run_cli("task=loadtest", f"loadtest.base_url={server.url}/v1", f"loadtest.api_key={API_KEY}",
                   "loadtest.api=chat", f"loadtest.prompts_file={prompts}", "loadtest.requests=6",
                   "loadtest.concurrency=2", "loadtest.output_tokens=6", "loadtest.slo_ttft_ms=60000",
                   "telemetry=off", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, runs = mlflow_runs(tmp_path)
    (run,) = runs
    m = run.data.metrics
    assert run.info.status == "FINISHED" and m["requests_completed"] == 6 and m["requests_failed"] == 0
    assert m["goodput_rps"] == pytest.approx(m["request_throughput_rps"])
    assert run.data.tags["loadtest.target_url"] == server.url and run.data.tags["loadtest.model"] == MODEL
