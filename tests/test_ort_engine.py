"""The I/O-binding onnxruntime engine on tiny_qwen: the same greedy tokens as the numpy-feeds loop
and the PyTorch model, the KV cache kept as OrtValues, thread settings, and the benchmark script's
smoke run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ascend_lab.bench.generation import FeedsEngine, GraphLayout, greedy_generate
from ascend_lab.device import HostTimer

TINY = GraphLayout("kv_cache", 2, 2, 16, 384, "float32")


def _context(launch_dir, *overrides):
    from conftest import CONF_DIR
    from hydra import compose, initialize_config_dir

    from ascend_lab.config import register_configs, validate
    from ascend_lab.context import JobContext
    from ascend_lab.tracking import Tracker

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose(config_name="config", overrides=["tracking=off", "device=cpu", *overrides]))
    return cfg, JobContext(cfg, Tracker(), launch_dir, launch_dir)


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("launch")


@pytest.fixture(scope="module")
def exported(launch_dir):
    from ascend_lab.export import ensure_exported

    cfg, ctx = _context(launch_dir, "runtime=onnxruntime")
    return ensure_exported(cfg, ctx)


@pytest.fixture(scope="module")
def torch_runtime():
    from ascend_lab.config import AppConfig
    from ascend_lab.device import Device
    from ascend_lab.runtimes.torch_runtime import TorchRuntime

    with TorchRuntime.load(AppConfig(), Device("cpu", 0, "test")) as runtime:
        yield runtime


def _prompts(seed: int, batch: int, length: int, pad: int = 0):
    ids = np.random.default_rng(seed).integers(0, 384, size=(batch, length))
    mask = np.ones_like(ids)
    if pad:
        mask[1, :pad] = 0  # left padding on one row: positions come from the mask
    return ids, mask


def test_io_binding_engine_equals_feeds_and_torch(exported, torch_runtime):
    from ascend_lab.runtimes.onnxruntime_runtime import OnnxRuntime
    from ascend_lab.runtimes.ort_engine import OrtEngine

    layout = GraphLayout.from_exported(exported)
    assert layout == TINY
    ids, mask = _prompts(3, 3, 9, pad=3)
    with OnnxRuntime(exported.onnx_path, intra_op_threads=1) as runtime:
        feeds = greedy_generate(FeedsEngine(runtime, layout), ids, mask, 20, HostTimer)
        engine = OrtEngine.from_runtime(runtime, layout)
        bound = greedy_generate(engine, ids, mask, 20, HostTimer)
        again = greedy_generate(engine, ids, mask, 20, HostTimer)  # prefill resets the state
    from_torch = greedy_generate(torch_runtime.engine(), ids, mask, 20, HostTimer)
    assert bound.tokens.shape == (3, 20) and bound.tokens.dtype == np.int64
    np.testing.assert_array_equal(bound.tokens, feeds.tokens)
    np.testing.assert_array_equal(bound.tokens, from_torch.tokens)
    np.testing.assert_array_equal(again.tokens, bound.tokens)
    assert len(set(bound.tokens[0].tolist())) > 1  # not a degenerate constant stream
    assert len(bound.step_ms) == 19 and bound.ttft_ms > 0


def test_the_cache_stays_in_ortvalues_and_grows_one_position_per_step(exported):
    import onnxruntime as ort

    from ascend_lab.runtimes.ort_engine import OrtEngine

    engine = OrtEngine.open(exported.onnx_path, TINY, intra_op_threads=1)
    ids, mask = _prompts(4, 2, 5)
    engine.prefill(ids, mask)
    assert len(engine._past) == 2 * TINY.num_layers
    assert all(isinstance(v, ort.OrtValue) for v in engine._past)
    assert engine._past[0].shape() == [2, 2, 5, 16] and engine._past[0].device_name() == "cpu"
    first_present = engine._past[0]
    engine.step()
    engine.step()
    assert engine._past[0].shape() == [2, 2, 7, 16]
    # The values bound as the past are the ones the previous step produced (no numpy round trip).
    np.testing.assert_array_equal(engine._past[0].numpy()[:, :, :5], first_present.numpy())
    assert engine.generated().shape == (2, 3) and engine.last_logits.shape == (2, 384)


def test_session_options_use_physical_cores():
    from ascend_lab.runtimes.ort_engine import physical_cores, session_options

    assert physical_cores() >= 1
    options = session_options()
    assert options.intra_op_num_threads == physical_cores() and options.inter_op_num_threads == 1
    assert session_options(3, 2, "basic").intra_op_num_threads == 3
    assert session_options(3, 2, "basic").inter_op_num_threads == 2


def test_engine_refuses_graphs_without_a_cache(exported):
    import onnxruntime as ort

    from ascend_lab.errors import ConfigError
    from ascend_lab.runtimes.ort_engine import OrtEngine

    session = ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="kv_cache"):
        OrtEngine(session, GraphLayout("logits", 2, 2, 16, 384, "float32"))
    with pytest.raises(ConfigError, match="export.graph"):
        OrtEngine(session, GraphLayout("hidden_states", 2, 2, 16, 384, "float32"))


@pytest.mark.slow
def test_benchmark_script_smoke(tmp_path):
    """decode_vs_hf.py on tiny_qwen: every row runs, the roofline and agreement figures come out."""
    from conftest import REPO

    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "decode_vs_hf.py"), "--tiny", "--quick", "--no-track",
         "--rows", "ort_feeds,ort,ort_int8", "--int8-methods", "dynamic", "--agreement-prompts", "3",
         "--agreement-tokens", "6", "--bandwidth-gb", "1", "--launch-dir", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {(f["row"], f["batch"]) for f in results["figures"]}
    assert rows == {("ort_feeds", 1), ("ort", 1), ("ort_int8_dynamic", 1)}
    assert all(f["decode_tokens_s"] > 0 and f["step_bytes"] > 0 for f in results["figures"])
    assert results["bandwidth"]["read_gb_s"] > 0
    agree = results["agreement"]["ort_int8_dynamic vs ort fp32"]
    assert agree["rows"] == 3 and 0 <= agree["agreement"] <= 1
    assert "ort_roofline_fraction.ort" in results["ratios"]
    assert "% roofline" in done.stdout
