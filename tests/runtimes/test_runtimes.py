"""Runtimes: onnxruntime on a small graph exported here, the one session factory, the torch runtime,
the generation engine over each runtime's cache backend (torch and onnxruntime give Hugging Face's
greedy tokens, left padding included), runtime selection."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ascend_lab import graph_contract as gc
from ascend_lab.bench.generation import greedy_generate
from ascend_lab.device import HostTimer
from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime, choose_providers

CAPACITY = 1024


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
    contract = gc.GraphContract("logits", gc.ModelDims(1, 1, 1, 8, 8, 5), "float32")
    runtime = OnnxRuntime(path, contract, "cpu", 0, intra_op_threads=1, inter_op_threads=1,
                          graph_optimization=optimization)
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
    contract = gc.GraphContract("logits", gc.ModelDims(1, 1, 1, 8, 8, 5), "float32")
    with caplog.at_level("WARNING"), OnnxRuntime(path, contract, "npu", 0) as runtime:
        assert runtime.providers == ["CPUExecutionProvider"]
        assert any("CANNExecutionProvider" in note for note in runtime.notes)
    assert "CANNExecutionProvider" in caplog.text


@pytest.fixture(scope="module")
def torch_runtime():
    from conftest import load_torch_runtime

    with load_torch_runtime() as runtime:
        yield runtime


def test_session_options_use_physical_cores_and_spin_by_default():
    from ascend_lab.runtimes.onnxruntime.runtime import physical_cores, session_options

    assert physical_cores() >= 1
    options = session_options()
    assert options.intra_op_num_threads == physical_cores() and options.inter_op_num_threads == 1
    assert session_options(3, 2, "basic").intra_op_num_threads == 3
    assert session_options(3, 2, "basic").inter_op_num_threads == 2
    spinning = "session.intra_op.allow_spinning"
    assert options.get_session_config_entry(spinning) == "1"
    assert session_options(allow_spinning=False).get_session_config_entry(spinning) == "0"


def prompts(seed: int, batch: int, length: int, pads=()):
    """Random prompts; row i gets pads[i] leading pad positions (left padding)."""
    ids = np.random.default_rng(seed).integers(0, 384, size=(batch, length))
    mask = np.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return ids, mask


def hf_greedy(model, ids, mask, new_tokens):
    """Hugging Face generate, greedy, exactly new_tokens (no EOS)."""
    import torch

    with torch.no_grad():
        out = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=None, pad_token_id=256)
    return out[:, ids.shape[1]:].numpy()


def generate(runtime, ids, mask, new_tokens):
    engine = runtime.engine(ids.shape[1] + new_tokens, CAPACITY)
    engine.prepare(ids.shape[0], ids.shape[1], new_tokens)
    return engine, greedy_generate(engine, ids, mask, new_tokens, HostTimer)


def test_torch_runtime_describes_the_kv_cache_contract(torch_runtime):
    contract = torch_runtime.contract
    assert contract == gc.GraphContract("kv_cache", gc.ModelDims(2, 4, 2, 16, 64, 384), "float32")
    assert [s.name for s in torch_runtime.inputs] == contract.input_names()
    assert [s.name for s in torch_runtime.outputs] == contract.output_names()
    ids, _ = prompts(1, 2, 5)
    pads = np.zeros(2, np.int64)
    out = torch_runtime.run({"input_ids": ids, "position_ids": gc.positions(0, 5, pads),
                             "past_length": np.array([0]), "pad_lengths": pads,
                             "past_key_values": np.zeros(contract.cache_shape(8, 2), np.float32)})
    assert out["logits"].shape == (2, 384) and out["present_key_values"].shape == (5, 2, 4, 2, 16)
    np.testing.assert_array_equal(out["next_token"], out["logits"].argmax(-1))


@pytest.mark.parametrize("batch, pads", [(1, ()), (4, (0, 3, 6, 1)), (8, (2, 0, 0, 5, 1, 0, 7, 3))])
def test_torch_engine_gives_hugging_face_greedy_tokens(torch_runtime, batch, pads):
    ids, mask = prompts(batch, batch, 9, pads)
    engine, result = generate(torch_runtime, ids, mask, 16)
    assert result.tokens.shape == (batch, 16) and result.tokens.dtype == np.int64
    np.testing.assert_array_equal(result.tokens, hf_greedy(torch_runtime.model, ids, mask, 16))
    assert len(result.step_ms) == 15 and result.ttft_ms > 0 and engine.prefill_executions == 1


def test_prefill_chunking_does_not_change_the_tokens(torch_runtime):
    """A 40-token prompt on a graph that takes any length: one execution of 40, unpadded, whatever
    export.prefill_chunks says. On a backend with gears (a compiled .om's) it is fed as one 48-chunk, as
    3 × 16, or token by token: the same generation every way."""
    from ascend_lab.runtimes.engine import CacheEngine

    ids, mask = prompts(7, 2, 40, (0, 11))
    engine, dynamic = generate(torch_runtime, ids, mask, 8)
    assert engine.prefill_executions == 1 and engine.plan(40, 8) == gc.PrefillPlan(40, 0, (40,))
    assert engine.backend.capacity == 48  # 40 + 7, rounded up: no slot spent on padding
    results = {}
    for chunks in ((48,), (16,), (1,)):
        backend = torch_runtime.cache_backend()
        backend.seq_gears = (1, *chunks)
        engine = CacheEngine(backend, torch_runtime.contract, CAPACITY, 48)
        result = greedy_generate(engine, ids, mask, 8, HostTimer)
        results[chunks] = (result.tokens, engine.prefill_executions)
    assert [n for _, n in results.values()] == [1, 3, 40]
    for tokens, _ in results.values():
        np.testing.assert_array_equal(tokens, dynamic.tokens)


def test_the_cache_is_sized_for_the_generation_and_reused(torch_runtime):
    ids, mask = prompts(2, 2, 14)
    engine, _ = generate(torch_runtime, ids, mask, 10)
    backend = engine.backend
    assert backend.capacity == 32  # 16 (the padded prompt) + 9 → 25, rounded up to 16s
    cache = backend.cache
    greedy_generate(engine, ids, mask, 10, HostTimer)
    assert backend.cache is cache  # a second generation of the same shape reuses it
    engine.prepare(2, 14, 40)
    assert backend.capacity == 64 and backend.cache is not cache


def test_kv_capacity_bounds_a_generation(torch_runtime):
    from ascend_lab.errors import ConfigError

    ids, mask = prompts(2, 1, 14)
    engine = torch_runtime.engine(14 + 30, 32)
    with pytest.raises(ConfigError, match=r"export.kv_capacity.*14-token prompt plus 30 new tokens needs 43 cache slots"):
        engine.prepare(1, 14, 30)


def test_right_padding_is_refused(torch_runtime):
    from ascend_lab.errors import AscendLabError

    ids, mask = prompts(2, 1, 6)
    mask[0, -2:] = 0
    engine = torch_runtime.engine(16, CAPACITY)
    with pytest.raises(AscendLabError, match="left-padded"):
        engine.prefill(ids, mask)


def test_graph_capture_engine_is_wired_and_agrees(torch_runtime, monkeypatch):
    """runtime.graph_capture selects the static-cache engine (eager on the CPU, with a note); its
    greedy tokens are the cache graph's, left padding included."""
    ids, mask = prompts(5, 3, 7, (0, 2))
    monkeypatch.setattr(torch_runtime, "graph_capture", True)
    engine = torch_runtime.engine(7 + 10, CAPACITY)
    assert type(engine).__name__ == "StaticDecoderEngine" and any("cpu" in n for n in engine.notes)
    engine.prepare(3, 7, 10)
    static = greedy_generate(engine, ids, mask, 10, HostTimer)
    monkeypatch.setattr(torch_runtime, "graph_capture", False)
    _, dynamic = generate(torch_runtime, ids, mask, 10)
    np.testing.assert_array_equal(static.tokens, dynamic.tokens)


def test_compile_backend_follows_the_device():
    from ascend_lab.errors import ToolchainError
    from ascend_lab.runtimes.torch.runtime import compile_backend

    assert compile_backend("auto", "cpu") == "inductor" and compile_backend("auto", "cuda") == "inductor"
    assert compile_backend("inductor", "npu") == "inductor"
    with pytest.raises(ToolchainError, match=r"(?s)torchair.*runtime.compile_backend=inductor"):
        compile_backend("auto", "npu")  # no torchair here


def test_hidden_states_graph_cannot_generate(torch_runtime, monkeypatch):
    from ascend_lab.errors import ConfigError

    monkeypatch.setattr(torch_runtime, "contract", gc.GraphContract("hidden_states", torch_runtime.contract.dims,
                                                                    "float32"))
    with pytest.raises(ConfigError, match="export.graph"):
        torch_runtime.engine(10, CAPACITY)


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory):
    """One launch folder for the module, so its tests share the export cache."""
    return tmp_path_factory.mktemp("launch")


def _context(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from ascend_lab.config import validate
    from ascend_lab.context import JobContext
    from ascend_lab.runtimes.registry import register_configs
    from ascend_lab.tracking import Tracker
    from conftest import CONF_DIR

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose(config_name="config", overrides=["tracking=off", "device=cpu", *overrides]))
    return cfg, JobContext(cfg, Tracker(), tmp_path, tmp_path)


def test_onnxruntime_gives_the_torch_runtimes_tokens(launch_dir, torch_runtime):
    """tiny_qwen at batch 1, 4 and 8 with left padding: the exported graph through onnxruntime, its cache
    bound in place, picks the tokens the torch runtime (and Hugging Face) picks."""
    from ascend_lab.prepare import open_engine, plan_runtime

    cfg, ctx = _context(launch_dir, "runtime=onnxruntime")
    plan = plan_runtime(cfg, ctx)
    assert plan.name == "onnxruntime" and len(plan.tags()["onnx_sha256"]) == 64
    with open_engine(cfg, ctx, plan) as loaded:
        ort_runtime = loaded.runtime
        assert ort_runtime.contract == torch_runtime.contract
        for batch, pads in ((1, ()), (4, (0, 3, 6, 1)), (8, (2, 0, 0, 5, 1, 0, 7, 3))):
            ids, mask = prompts(10 + batch, batch, 9, pads)
            engine, from_onnx = generate(ort_runtime, ids, mask, 20)
            assert type(engine.backend).__name__ == "OrtCacheBackend"
            _, from_torch = generate(torch_runtime, ids, mask, 20)
            np.testing.assert_array_equal(from_onnx.tokens, from_torch.tokens)
            assert len(np.unique(from_torch.tokens)) > 1  # not a degenerate constant stream
        # The fused derived graph's cache: one numpy array [2·layers, batch, kv_heads, capacity, dim] whose layer
        # parts the session reads and writes in place (each bound as a layer's input and output).
        backend = engine.backend
        assert backend.in_place and backend.cache.shape == ort_runtime.contract.cache_shape(backend.capacity, 8)
        assert [value.data_ptr() for value in backend._layer_values] == [part.ctypes.data for part in backend._layers]


def test_the_plain_export_reads_the_contracts_cache_in_place(launch_dir, torch_runtime):
    """runtime.transformer_optimize=false loads the export as it is: one cache tensor in the contract's layout,
    bound in place, and the same tokens."""
    from ascend_lab.prepare import open_engine

    cfg, ctx = _context(launch_dir, "runtime=onnxruntime", "runtime.transformer_optimize=false")
    with open_engine(cfg, ctx) as loaded:
        ids, mask = prompts(12, 2, 9, (0, 3))
        engine, from_onnx = generate(loaded.runtime, ids, mask, 12)
        _, from_torch = generate(torch_runtime, ids, mask, 12)
        np.testing.assert_array_equal(from_onnx.tokens, from_torch.tokens)
        backend = engine.backend
        assert not backend.in_place and backend._cache_value.data_ptr() == backend.cache.ctypes.data


def test_transformer_optimized_graph_is_planned_loaded_and_keeps_the_tokens(launch_dir, torch_runtime):
    """runtime.transformer_optimize: the plan names the derived graph (fused RMSNorms, fewer nodes), the
    runtime loads it, and its greedy tokens are the torch runtime's."""
    import onnx

    from ascend_lab.prepare import open_engine, plan_runtime

    cfg, ctx = _context(launch_dir, "runtime=onnxruntime", "runtime.transformer_optimize=true",
                        "runtime.allow_spinning=false")
    plan = plan_runtime(cfg, ctx)
    assert plan.onnx_path != plan.exported.onnx_path and plan.onnx_path.parent.name.endswith("~ortopt")
    assert plan.tags()["onnx_optimized_path"] == str(plan.onnx_path)
    plain, fused = (onnx.load(str(p), load_external_data=False).graph.node
                    for p in (plan.exported.onnx_path, plan.onnx_path))
    assert "SimplifiedLayerNormalization" in {n.op_type for n in fused} and len(fused) < len(plain)
    # The fused attention: per layer one q|k|v matmul and one GroupQueryAttention, the only reader and writer of
    # the layer's cache (an input and an output of the same name pattern), and nothing else of the old attention.
    graph = onnx.load(str(plan.onnx_path), load_external_data=False).graph
    layers = plan.exported.dims.num_layers
    ops = Counter(n.op_type for n in graph.node)
    assert ops["GroupQueryAttention"] == layers and ops["MatMul"] == 5 * layers + 1  # qkv, o, gate, up, down; head
    assert ops["Softmax"] == ops["Transpose"] == ops["Where"] == 0
    # The ops' lengths and the pads' bias are inputs the runtime makes, and the LM head's matmul writes the logits.
    assert {"seqlens_k", "total_sequence_length", "query_seqlens", "attention_bias"} <= {i.name for i in graph.input}
    assert not {"past_length", "pad_lengths"} & {i.name for i in graph.input}
    assert next(n for n in graph.node if "logits" in n.output).op_type == "MatMul"
    layer_inputs = [i.name for i in graph.input if i.name.startswith("past_key_values.")]
    assert len(layer_inputs) == 2 * layers and "past_key_values" not in {i.name for i in graph.input}
    assert [o.name for o in graph.output if o.name.startswith("present_key_values")] == [
        f"present_key_values.{j}" for j in range(2 * layers)]
    assert {n.op_type for n in graph.node for name in n.input if name in layer_inputs} == {"GroupQueryAttention"}
    with open_engine(cfg, ctx, plan) as loaded:
        ort_runtime = loaded.runtime
        assert ort_runtime._opened_with["onnx_path"] == plan.onnx_path
        options = ort_runtime.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        ids, mask = prompts(14, 4, 9, (0, 3, 6, 1))
        _, optimized = generate(ort_runtime, ids, mask, 20)
        _, from_torch = generate(torch_runtime, ids, mask, 20)
        np.testing.assert_array_equal(optimized.tokens, from_torch.tokens)


def test_the_backend_writes_exactly_the_new_slots(launch_dir):
    from ascend_lab.prepare import open_engine, plan_runtime

    cfg, ctx = _context(launch_dir, "runtime=onnxruntime")
    with open_engine(cfg, ctx) as loaded:
        ort_runtime = loaded.runtime
        ids, mask = prompts(4, 2, 5)
        engine = ort_runtime.engine(12, CAPACITY)
        engine.prepare(2, 5, 4)
        engine.prefill(ids, mask)
        cache = engine.backend.cache
        written = np.abs(cache).reshape(cache.shape[0], -1).sum(axis=1) > 0
        assert written[:5].all() and not written[5:].any()  # the 5 tokens in one execution, no pad slots
        assert engine.prefill_executions == 1
        engine.step()
        engine.step()
        cache = engine.backend.cache
        written = np.abs(cache).reshape(cache.shape[0], -1).sum(axis=1) > 0
        assert written[:7].all() and not written[7:].any()
        assert engine.generated().shape == (2, 3)


def test_open_engine_loads_the_configs_target_with_its_own_config(launch_dir):
    """The one call a task makes: the runtime is the class runtime._target_ names, built from its own config and the
    prepared artifact; the tokenizer, the timer and the engine come with it, the engine's kind as a tag."""
    import dataclasses

    from ascend_lab.prepare import open_engine
    from ascend_lab.runtimes.torch.runtime import TorchRuntime
    from ascend_lab.tracking import Tracker

    class Tags(Tracker):
        def __init__(self):
            self.tags = {}

        def set_tags(self, tags):
            self.tags.update(tags)

    cfg, ctx = _context(launch_dir, "runtime=torch")
    ctx = dataclasses.replace(ctx, tracker=Tags())
    with open_engine(cfg, ctx) as loaded:
        assert type(loaded.runtime) is TorchRuntime and loaded.plan.config is cfg.runtime
        assert loaded.plan.artifact.model == cfg.model and loaded.load_seconds > 0
        assert loaded.timer == ctx.device.timer  # torch's calls return before the device finishes
        ids = np.asarray([loaded.tokenizer("你好, world")["input_ids"]], dtype=np.int64)
        engine = loaded.engine(ids.shape[1] + 4)
        assert greedy_generate(engine, ids, np.ones_like(ids), 4, loaded.timer).tokens.shape == (1, 4)
    assert loaded.runtime.wrapper is None  # closed with the block
    assert ctx.tracker.tags["runtime"] == "torch" and ctx.tracker.tags["engine"] == "CacheEngine"


def test_auto_without_pyacl_chooses_onnxruntime_and_says_why(launch_dir):
    from ascend_lab.prepare import plan_runtime

    cfg, ctx = _context(launch_dir)
    plan = plan_runtime(cfg, ctx)
    assert plan.name == "onnxruntime"
    assert plan.tags()["runtime.reason"].startswith("auto: pyACL not importable")


def test_runtime_acl_without_pyacl_is_a_clear_error(tmp_path):
    from ascend_lab.errors import ToolchainError
    from ascend_lab.prepare import plan_runtime

    cfg, ctx = _context(tmp_path, "runtime=acl")
    with pytest.raises(ToolchainError, match="runtime=acl needs pyACL"):
        plan_runtime(cfg, ctx)
