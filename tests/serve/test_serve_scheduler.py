"""The serving scheduler on the real tiny_qwen kv_cache graph (torch, onnxruntime, and onnxruntime on the derived
graph with the fused attention, in process): a request that joins and leaves a running batch gets exactly the greedy
tokens it gets alone, also when the rows slide (compaction at the cache's end, a long prompt joining a short
context) and when requests wait for room; cancelling frees a row; seeded sampling repeats. Plus the text side (no
character split across deltas, stop strings never sent) and the load-test figures' definitions."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ascend_lab.config import AppConfig
from ascend_lab.serve.scheduler import ABORT, LENGTH, QueueFull, Request, Sampling, Scheduler



@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    from ascend_lab.context import JobContext
    from ascend_lab.device import Device
    from ascend_lab.export import ensure_exported
    from ascend_lab.export.optimize import optimized_graph
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime
    from ascend_lab.tracking import Tracker
    from conftest import load_torch_runtime

    launch = tmp_path_factory.mktemp("serve_sched")
    cfg = AppConfig()
    exported = ensure_exported(cfg, JobContext(cfg, Tracker(), launch, launch))
    dims = exported.contract.dims
    # What task=serve runtime=onnxruntime loads by default: the derived graph with the fused attention
    # (ascend_lab.export.fused_attention), which writes each layer's cache in place; its backend converts the rows
    # it moves to the contract's layout, and the moved keys keep the rotary positions they were written with.
    optimized = optimized_graph(exported, dims.num_heads, dims.hidden_size)
    with load_torch_runtime(cfg, Device("cpu", 0, "test")) as torch_rt, \
            OnnxRuntime(exported.onnx_path, exported.contract, "cpu", 0, 1, 1, "all") as ort_rt, \
            OnnxRuntime(optimized, exported.contract, "cpu", 0, 1, 1, "all") as fused_rt:
        assert fused_rt.cache_backend().in_place
        yield {"torch": torch_rt, "onnxruntime": ort_rt, "onnxruntime fused attention": fused_rt}


def generate(scheduler: Scheduler, prompts, max_tokens, delays=None, sampling=None, cancel_after=None):
    """Submit each prompt (after its delay) and collect (tokens, finish reason) per request."""
    outs = [[] for _ in prompts]
    finished = [None] * len(prompts)
    events = [threading.Event() for _ in prompts]
    requests = []
    for i, prompt in enumerate(prompts):
        time.sleep((delays or [0] * len(prompts))[i])

        def emit(token, finish, i=i):
            if token is not None:
                outs[i].append(token)
                if cancel_after and cancel_after.get(i) == len(outs[i]):
                    requests[i].cancel()
            if finish is not None:
                finished[i] = finish
                events[i].set()

        params = (sampling or {}).get(i, Sampling(max_tokens=max_tokens[i], ignore_eos=True))
        requests.append(Request(list(prompt), params, frozenset(), emit))
        scheduler.submit(requests[-1])
    for event in events:
        assert event.wait(60), "a request did not finish"
    return outs, finished


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "onnxruntime fused attention"])
@pytest.mark.parametrize("capacity", [256, 64])
def test_requests_joining_a_running_batch_get_their_tokens_alone(runtimes, name, capacity):
    """capacity 64: the rows slide left when the write position reaches it, right when a long prompt joins, and a
    request waits while the batch has no room for it."""
    rng = np.random.default_rng(7)
    prompts = [rng.integers(0, 256, size=n).tolist() for n in (5, 30, 12, 3, 40, 7, 21)]
    max_tokens = [20, 10, 25, 8, 15, 30, 12]
    scheduler = Scheduler(runtimes[name], capacity, max_batch=3, queue_size=16)
    try:
        alone = [generate(scheduler, [p], [m])[0][0] for p, m in zip(prompts, max_tokens)]
        together, finished = generate(scheduler, prompts, max_tokens, delays=[0, 0.01, 0, 0.02, 0.005, 0, 0.01])
        assert finished == [LENGTH] * len(prompts)
        assert together == alone
        assert [len(t) for t in together] == max_tokens
        assert scheduler.running() == 0 and scheduler.queued() == 0
    finally:
        scheduler.close()


def test_a_cancelled_request_frees_its_row_and_the_others_are_unchanged(runtimes):
    scheduler = Scheduler(runtimes["onnxruntime"], 256, max_batch=2, queue_size=4)
    try:
        prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
        alone = [generate(scheduler, [p], [12])[0][0] for p in prompts]
        outs, finished = generate(scheduler, prompts, [12, 12, 12], cancel_after={0: 3})
        assert finished == [ABORT, LENGTH, LENGTH]
        assert outs[0] == alone[0][:3] and outs[1:] == alone[1:]
    finally:
        scheduler.close()


def test_seeded_sampling_repeats_and_differs_from_greedy(runtimes):
    scheduler = Scheduler(runtimes["torch"], 256, max_batch=2, queue_size=4)
    try:
        prompt = [[10, 20, 30]]
        seeded = {0: Sampling(max_tokens=16, temperature=1.5, top_p=0.9, seed=3, ignore_eos=True)}
        first = generate(scheduler, prompt, [16], sampling=seeded)[0][0]
        again = generate(scheduler, prompt, [16], sampling=seeded)[0][0]
        greedy = generate(scheduler, prompt, [16])[0][0]
        assert first == again and first != greedy
    finally:
        scheduler.close()


def test_a_full_queue_refuses_and_close_ends_every_request(runtimes):
    scheduler = Scheduler(runtimes["torch"], 256, max_batch=1, queue_size=1)
    ended = []

    def long_request():
        return Request([1, 2], Sampling(max_tokens=250, ignore_eos=True), frozenset(),
                       lambda token, finish: ended.append(finish) if finish else None)

    try:
        scheduler.submit(long_request())
        deadline = time.monotonic() + 30
        while scheduler.running() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        scheduler.submit(long_request())  # waits: the one row is busy
        with pytest.raises(QueueFull):
            scheduler.submit(long_request())
    finally:
        scheduler.close()
    assert len(ended) == 2 and scheduler.running() == 0 and scheduler.queued() == 0


def test_chinese_text_streams_whole_characters_and_stop_strings_are_never_sent():
    from ascend_lab.models import build_byte_tokenizer
    from ascend_lab.serve.text import TextStream

    tokenizer = build_byte_tokenizer()
    text = "昇腾推理服务:你好,世界!🙂 done"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # one token per byte: every Chinese character spans three tokens
    stream = TextStream(tokenizer, [])
    deltas = [stream.push(t) for t in ids] + [stream.finish()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    assert all(d.encode("utf-8").decode("utf-8") == d for d in deltas)

    stream = TextStream(tokenizer, ["世界", "never"])
    out = ""
    for token in ids:
        out += stream.push(token)
        if stream.stopped:
            break
    assert stream.stopped and out == "昇腾推理服务:你好,"


def test_figures_follow_vllm_bench_serve_definitions():
    from ascend_lab.loadtest.figures import RequestRecord, serving_figures

    records = [RequestRecord(start=0.0, end=1.0, success=True, ttft=0.1, latency=1.0, output_tokens=10,
                             prompt_tokens=5, itl=(0.1,) * 9),
               RequestRecord(start=0.5, end=2.0, success=True, ttft=0.3, latency=1.5, output_tokens=5,
                             prompt_tokens=5, itl=(0.3,) * 4),
               RequestRecord(start=0.5, end=0.6, success=False)]
    figures = serving_figures(records, {"ttft": 200.0})
    assert figures["requests_completed"] == 2 and figures["requests_failed"] == 1
    assert figures["duration_s"] == pytest.approx(2.0)
    assert figures["output_throughput_tokens_s"] == pytest.approx(15 / 2.0)
    assert figures["request_throughput_rps"] == pytest.approx(1.0)
    assert figures["ttft_ms_mean"] == pytest.approx(200.0) and figures["ttft_ms_median"] == pytest.approx(200.0)
    assert figures["tpot_ms_mean"] == pytest.approx(((0.9 / 9) + (1.2 / 4)) / 2 * 1e3)
    assert figures["itl_ms_median"] == pytest.approx(100.0)  # the 13 gaps pooled: nine of 100 ms, four of 300
    assert figures["e2el_ms_p99"] == pytest.approx(float(np.percentile([1000.0, 1500.0], 99)))
    assert figures["goodput_rps"] == pytest.approx(0.5)  # only the first meets TTFT ≤ 200 ms
