"""Runtimes: onnxruntime on a small graph exported here, the torch runtime and its device-side
decode engine, runtime selection, and torch vs onnxruntime greedy tokens on tiny_qwen."""

from __future__ import annotations

import numpy as np
import pytest

from ascend_lab.bench.generation import FeedsEngine, GraphLayout, greedy_generate
from ascend_lab.device import HostTimer
from ascend_lab.runtimes.onnxruntime_runtime import OnnxRuntime, choose_providers


def test_providers_follow_the_device_and_the_build():
    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu", 0, cpu_only) == (["CPUExecutionProvider"], [])
    providers, notes = choose_providers("npu", 1, cpu_only)
    assert providers == ["CPUExecutionProvider"]
    assert len(notes) == 1 and "CANNExecutionProvider" in notes[0] and "onnxruntime-cann" in notes[0]
    providers, notes = choose_providers("npu", 1, ["CANNExecutionProvider", *cpu_only])
    assert providers == [("CANNExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"] and notes == []
    providers, notes = choose_providers("cuda", 0, ["CUDAExecutionProvider", *cpu_only])
    assert providers[0] == ("CUDAExecutionProvider", {"device_id": 0}) and notes == []


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """A two-input graph with dynamic batch/seq axes, and the torch module it came from."""
    import torch

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(32, 8)
            self.proj = torch.nn.Linear(8, 5)

        def forward(self, input_ids, attention_mask):
            hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
            return self.proj(hidden)

    torch.manual_seed(0)
    module = Small().eval()
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    ids = torch.zeros(2, 3, dtype=torch.int64)
    torch.onnx.export(module, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "logits")})
    return path, module


@pytest.mark.parametrize("optimization", ["disable", "all"])
def test_onnxruntime_runs_and_describes(small_onnx, optimization):
    import torch

    path, module = small_onnx
    runtime = OnnxRuntime(path, "cpu", 0, intra_op_threads=1, inter_op_threads=1, graph_optimization=optimization)
    with runtime:
        assert runtime.providers == ["CPUExecutionProvider"]
        assert [(s.name, s.dtype) for s in runtime.inputs] == [("input_ids", np.int64), ("attention_mask", np.int64)]
        assert runtime.inputs[0].shape == ("batch", "seq")
        assert [(s.name, s.shape) for s in runtime.outputs] == [("logits", ("batch", "seq", 5))]
        ids = np.random.default_rng(0).integers(0, 32, size=(4, 6))
        mask = np.ones_like(ids)
        mask[0, :2] = 0
        out = runtime.run({"input_ids": ids, "attention_mask": mask, "unused": ids})
        with torch.no_grad():
            expected = module(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        assert set(out) == {"logits"}
        np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-6)
    runtime.close()  # twice is fine
    with pytest.raises(RuntimeError):
        runtime.run({"input_ids": ids, "attention_mask": mask})


def test_onnxruntime_notes_a_missing_device_provider(small_onnx, caplog):
    path, _ = small_onnx
    with caplog.at_level("WARNING"), OnnxRuntime(path, "npu", 0) as runtime:
        assert runtime.providers == ["CPUExecutionProvider"]
        assert any("CANNExecutionProvider" in note for note in runtime.notes)
    assert "CANNExecutionProvider" in caplog.text


@pytest.fixture(scope="module")
def torch_runtime():
    from ascend_lab.config import AppConfig
    from ascend_lab.device import Device
    from ascend_lab.runtimes.torch_runtime import TorchRuntime

    with TorchRuntime.load(AppConfig(), Device("cpu", 0, "test")) as runtime:
        yield runtime


def test_torch_runtime_follows_the_kv_cache_convention(torch_runtime):
    layout = torch_runtime.layout
    assert layout == GraphLayout("kv_cache", 2, 2, 16, 384, "float32")
    names = [s.name for s in torch_runtime.inputs]
    assert names[:3] == ["input_ids", "attention_mask", "past_key_values.0.key"] and len(names) == 6
    ids = np.random.default_rng(1).integers(0, 384, size=(2, 5))
    out = torch_runtime.run(layout.forward_feeds(ids, np.ones_like(ids)))
    assert [s.name for s in torch_runtime.outputs] == list(out)
    assert out["logits"].shape == (2, 5, 384) and out["present.1.value"].shape == (2, 2, 5, 16)
    # One decode step on the presents equals the prefill of the longer sequence (last position).
    nxt = np.argmax(out["logits"][:, -1], axis=-1)[:, None]
    step = torch_runtime.run({"input_ids": nxt, "attention_mask": np.ones((2, 6), np.int64),
                              **{p: out[q] for p, q in zip(layout.past_names(), layout.present_names())}})
    full = torch_runtime.run(layout.forward_feeds(np.concatenate([ids, nxt], 1), np.ones((2, 6), np.int64)))
    np.testing.assert_allclose(step["logits"][:, -1], full["logits"][:, -1], rtol=1e-4, atol=1e-5)


def test_device_engine_equals_numpy_feeds_engine(torch_runtime):
    ids = np.random.default_rng(2).integers(0, 384, size=(3, 7))
    mask = np.ones_like(ids)
    on_device = greedy_generate(torch_runtime.engine(), ids, mask, 12, HostTimer)
    through_feeds = greedy_generate(FeedsEngine(torch_runtime, torch_runtime.layout), ids, mask, 12, HostTimer)
    assert on_device.tokens.shape == (3, 12) and on_device.tokens.dtype == np.int64
    np.testing.assert_array_equal(on_device.tokens, through_feeds.tokens)
    assert len(on_device.step_ms) == 11 and on_device.ttft_ms > 0 and all(ms > 0 for ms in on_device.step_ms)


def test_graph_capture_engine_is_wired_and_agrees(torch_runtime, monkeypatch):
    """runtime.graph_capture selects the static-cache engine (eager on the CPU, with a note); its
    greedy tokens are the dynamic-cache engine's, left padding included."""
    ids = np.random.default_rng(5).integers(0, 384, size=(3, 7))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    monkeypatch.setattr(torch_runtime, "graph_capture", True)
    engine = torch_runtime.engine(7 + 10)
    assert type(engine).__name__ == "StaticDecoderEngine" and any("cpu" in n for n in engine.notes)
    engine.prepare(3, 7, 10)
    static = greedy_generate(engine, ids, mask, 10, HostTimer)
    monkeypatch.setattr(torch_runtime, "graph_capture", False)
    dynamic = greedy_generate(torch_runtime.engine(17), ids, mask, 10, HostTimer)
    np.testing.assert_array_equal(static.tokens, dynamic.tokens)


def test_hidden_states_graph_cannot_generate():
    from ascend_lab.errors import ConfigError

    layout = GraphLayout("hidden_states", 2, 2, 16, 384, "float32")
    with pytest.raises(ConfigError, match="export.graph"):
        FeedsEngine(object(), layout)


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory):
    """One launch folder for the module, so its tests share the export cache."""
    return tmp_path_factory.mktemp("launch")


def _context(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from ascend_lab.config import register_configs, validate
    from ascend_lab.context import JobContext
    from ascend_lab.tracking import Tracker
    from conftest import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose(config_name="config", overrides=["tracking=off", "device=cpu", *overrides]))
    return cfg, JobContext(cfg, Tracker(), tmp_path, tmp_path)


def test_torch_and_onnxruntime_pick_the_same_greedy_tokens(launch_dir, torch_runtime):
    """tiny_qwen, batch 2, 20 tokens: the exported graph and the PyTorch model agree token for token."""
    from ascend_lab.runtimes.select import layout_for, open_runtime, plan_runtime

    cfg, ctx = _context(launch_dir, "runtime=onnxruntime")
    plan = plan_runtime(cfg, ctx)
    assert plan.name == "onnxruntime" and len(plan.tags()["onnx_sha256"]) == 64
    ids = np.random.default_rng(3).integers(0, 384, size=(2, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding on one row: positions come from the mask in both
    with open_runtime(plan, cfg, ctx) as ort_runtime:
        layout = layout_for(plan, ort_runtime)
        assert layout == torch_runtime.layout
        from_onnx = greedy_generate(FeedsEngine(ort_runtime, layout), ids, mask, 20, HostTimer)
        engine = ort_runtime.engine(layout)
        assert type(engine).__name__ == "OrtEngine"  # what task=bench uses: I/O binding, cache kept in ORT
        bound = greedy_generate(engine, ids, mask, 20, HostTimer)
    from_torch = greedy_generate(torch_runtime.engine(), ids, mask, 20, HostTimer)
    assert from_onnx.tokens.shape == (2, 20)
    np.testing.assert_array_equal(from_onnx.tokens, from_torch.tokens)
    np.testing.assert_array_equal(bound.tokens, from_torch.tokens)
    assert len(set(from_torch.tokens[0].tolist())) > 1  # not a degenerate constant stream


def test_auto_without_pyacl_chooses_onnxruntime_and_says_why(launch_dir):
    from ascend_lab.runtimes.select import plan_runtime

    cfg, ctx = _context(launch_dir)
    plan = plan_runtime(cfg, ctx)
    assert plan.name == "onnxruntime"
    assert plan.tags()["runtime.reason"].startswith("auto: pyACL not importable")


def test_runtime_acl_without_pyacl_is_a_clear_error(tmp_path):
    from ascend_lab.errors import ToolchainError
    from ascend_lab.runtimes.select import plan_runtime

    cfg, ctx = _context(tmp_path, "runtime=acl")
    with pytest.raises(ToolchainError, match="runtime=acl needs pyACL"):
        plan_runtime(cfg, ctx)


def test_a_masked_fixed_past_is_still_a_prefill(torch_runtime):
    """Graphs compiled with a fixed past length (ATC) get zero, masked-out past positions: the
    logits equal those of the prefill with an empty past."""
    layout = torch_runtime.layout
    ids = np.random.default_rng(4).integers(0, 384, size=(2, 6))
    mask = np.ones_like(ids)
    padded = layout.forward_feeds(ids, mask, past_len=5)
    assert padded["attention_mask"].shape == (2, 11) and padded["attention_mask"][:, :5].sum() == 0
    assert padded["past_key_values.0.key"].shape == (2, 2, 5, 16)
    np.testing.assert_allclose(torch_runtime.run(padded)["logits"],
                               torch_runtime.run(layout.forward_feeds(ids, mask))["logits"], rtol=1e-4, atol=1e-5)
