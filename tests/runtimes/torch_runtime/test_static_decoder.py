"""The static-KV-cache decoder: greedy tokens equal Hugging Face ``generate`` and the torch
runtime's engine (float32, CPU); its decode step replays correctly when captured (a recording
stand-in for CUDA/NPU graphs that bakes every op's arguments, as a real graph does); buffers and
captures are reused across generations; the GPU check script runs end to end without Hydra."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from ascend_lab.bench.generation import greedy_generate
from ascend_lab.device import Device, HostTimer
from ascend_lab.runtimes.torch import static_decoder
from ascend_lab.runtimes.torch.static_decoder import GraphApi, StaticDecoderEngine

from conftest import REPO  # noqa: E402
NEW_TOKENS = 24
CPU = Device("cpu", 0, "test")
BLOCK_HEAVY_IMPORTS = "import sys\nfor name in ('hydra', 'omegaconf', 'mlflow'):\n    sys.modules[name] = None\n"


def _load(compose, *overrides):
    from ascend_lab.config import validate
    from ascend_lab.models import load_model

    cfg = validate(compose("tracking=off", "device=cpu", "model=tiny_qwen", *overrides))
    return cfg, load_model(cfg.model, cfg.seed)


def _prompt(batch: int, seed: int = 1, length: int = 11):
    ids = np.random.default_rng(seed).integers(0, 384, size=(batch, length))
    mask = np.ones_like(ids)
    if batch > 1:
        mask[1, :4] = 0  # left padding in one row
    return ids, mask


def _hf_generate(model, ids, mask, new_tokens=NEW_TOKENS):
    """HF greedy ``generate`` with exactly ``new_tokens`` tokens and no end-of-sequence rule, like
    the engines: with an eos id, ``min_new_tokens`` would forbid that token (a -inf logit) where
    the engines pick it. ``generate`` fills a None eos from ``model.generation_config``, so it is
    cleared there for the call."""
    import torch

    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None
    try:
        with torch.no_grad():
            out = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    finally:
        model.generation_config.eos_token_id = saved
    assert out.shape[1] == ids.shape[1] + new_tokens
    return out[:, ids.shape[1]:].numpy()


def _engine_tokens(engine, ids, mask, new_tokens=NEW_TOKENS):
    return greedy_generate(engine, ids, mask, new_tokens, HostTimer).tokens


@pytest.mark.parametrize("overrides", [
    (),  # tiny_qwen: 4 query heads over 2 KV heads (GQA), separate lm_head
    ("model.tie_word_embeddings=true", "model.num_key_value_heads=1"),  # tied embeddings, one KV head
    ("model.num_key_value_heads=4", "model.rope_theta=1000000.0"),  # plain multi-head, Qwen1.5's rope base
], ids=["gqa", "tied-mqa", "mha"])
def test_greedy_tokens_equal_hf_generate_and_the_torch_engine(compose, overrides):
    import torch

    from ascend_lab.runtimes.torch.runtime import TorchRuntime

    cfg, loaded = _load(compose, *overrides)
    model = loaded.model
    if "model.tie_word_embeddings=true" in overrides:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        # With small random layers a tied model just echoes its last input token; larger layer
        # weights make the layers decide the next token, so the comparison means something.
        with torch.no_grad():
            for module in model.model.layers.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.mul_(10.0)
    engine = StaticDecoderEngine(model, CPU, max_len=11 + NEW_TOKENS, graph_capture=False, compile=False)
    from ascend_lab import graph_contract as gc

    contract = gc.GraphContract("kv_cache", gc.ModelDims.of(loaded.config), cfg.model.dtype)
    torch_engine = TorchRuntime(model, contract, torch.device("cpu")).engine(11 + NEW_TOKENS, 1024)
    for batch in (1, 3):
        ids, mask = _prompt(batch)
        ours = _engine_tokens(engine, ids, mask)
        assert ours.shape == (batch, NEW_TOKENS) and ours.dtype == np.int64
        np.testing.assert_array_equal(ours, _hf_generate(model, ids, mask))
        np.testing.assert_array_equal(ours, _engine_tokens(torch_engine, ids, mask))
        assert len(set(ours[0].tolist())) > 3  # a real token stream, not a constant
    # the padded row is the same sequence as that prompt alone (padding is invisible)
    ids, mask = _prompt(3)
    alone = _engine_tokens(engine, ids[1:2, 4:], mask[1:2, 4:])
    np.testing.assert_array_equal(_engine_tokens(engine, ids, mask)[1:2], alone)


@pytest.fixture(scope="module")
def tiny_model():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         use_sliding_window=False, eos_token_id=256, pad_token_id=256)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


# -- a stand-in for CUDA/NPU graphs -----------------------------------------------------------


class RecordingGraph:
    """Records every aten op run inside ``graph(g)`` with its very argument tensors and Python
    values; ``replay`` re-runs them, writing results into the recorded outputs. Like a device
    graph, nothing read on the host at capture time changes on replay, and a host sync
    (``.item()``, data-dependent shapes) is refused during capture."""

    HOST_SYNC_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "equal", "item")

    def __init__(self) -> None:
        self.ops: list = []
        self.replays = 0

    def replay(self) -> None:
        import torch

        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                result = func(*args, **kwargs)
                if func._schema.is_mutable:  # in-place: it already wrote its target
                    continue
                for old, new in zip(_tensors(out), _tensors(result)):
                    if old.data_ptr() != new.data_ptr():
                        old.copy_(new)
        self.replays += 1


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


class FakeGraphBackend:
    """torch.cuda's stream/graph surface, on the CPU."""

    class Stream:
        def wait_stream(self, other) -> None:
            pass

    def __init__(self) -> None:
        self.captured: list[RecordingGraph] = []

    def current_stream(self):
        return self.Stream()

    @contextmanager
    def stream(self, stream):
        yield

    def synchronize(self) -> None:
        pass

    @contextmanager
    def graph(self, graph: RecordingGraph):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Recorder(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = func.overloadpacket.__name__
                if name in RecordingGraph.HOST_SYNC_OPS:
                    raise AssertionError(f"host sync {func} during graph capture")
                out = func(*args, **kwargs)
                graph.ops.append((func, args, kwargs, out))
                return out

        with Recorder():
            yield
        self.captured.append(graph)


@pytest.fixture
def fake_graphs(monkeypatch):
    backend = FakeGraphBackend()
    monkeypatch.setattr(static_decoder, "_graph_api", lambda kind: GraphApi(backend, RecordingGraph))
    return backend


def test_captured_step_replays_the_eager_tokens_and_is_reused(tiny_model, fake_graphs):
    eager = StaticDecoderEngine(tiny_model, "cpu", max_len=40)
    captured = StaticDecoderEngine(tiny_model, "cpu", max_len=40, graph_capture=True)
    assert captured.graph_capture and captured.notes == []
    ids, mask = _prompt(3)
    expected = _engine_tokens(eager, ids, mask)

    # captured lazily at the first step, after prefill: the prefill state survives the warm-up
    np.testing.assert_array_equal(_engine_tokens(captured, ids, mask), expected)
    graph = fake_graphs.captured[0]
    assert captured.captures == 1 and graph.replays == NEW_TOKENS - 1 and len(graph.ops) > 50
    # same shapes again (another prompt): same buffers, same graph
    other_ids, other_mask = _prompt(3, seed=7)
    np.testing.assert_array_equal(_engine_tokens(captured, other_ids, other_mask),
                                  _engine_tokens(eager, other_ids, other_mask))
    assert (captured.captures, captured.allocations, len(fake_graphs.captured)) == (1, 1, 1)
    # another batch: new buffers and one new capture
    ids1, mask1 = _prompt(1)
    np.testing.assert_array_equal(_engine_tokens(captured, ids1, mask1), _engine_tokens(eager, ids1, mask1))
    assert (captured.captures, captured.allocations) == (2, 2)


def test_prepare_captures_before_prefill(tiny_model, fake_graphs):
    engine = StaticDecoderEngine(tiny_model, "cpu", max_len=8, graph_capture=True)
    engine.prepare(batch=3, prompt_len=11, new_tokens=NEW_TOKENS)  # grows past max_len to fit
    assert engine.captures == 1 and engine.capacity >= 11 + NEW_TOKENS - 1 and engine.capacity % 16 == 0
    ids, mask = _prompt(3)
    tokens = _engine_tokens(engine, ids, mask)
    assert engine.captures == 1 and engine.allocations == 1
    np.testing.assert_array_equal(tokens, _engine_tokens(StaticDecoderEngine(tiny_model, "cpu", 40), ids, mask))


def test_graph_capture_on_the_cpu_runs_eagerly_and_says_so(tiny_model, caplog):
    with caplog.at_level("WARNING"):
        engine = StaticDecoderEngine(tiny_model, CPU, max_len=40, graph_capture=True)
    assert engine.graph_capture is False
    assert len(engine.notes) == 1 and "not available on cpu" in engine.notes[0]
    assert "not available on cpu" in caplog.text
    ids, mask = _prompt(3)
    np.testing.assert_array_equal(_engine_tokens(engine, ids, mask),
                                  _engine_tokens(StaticDecoderEngine(tiny_model, CPU, 40), ids, mask))
    assert engine.captures == 0


def test_a_full_cache_is_a_clear_error(tiny_model):
    from ascend_lab.errors import ToolchainError

    engine = StaticDecoderEngine(tiny_model, CPU, max_len=16)
    ids, mask = _prompt(1, length=10)
    engine.prefill(ids, mask)
    for _ in range(engine.capacity - 10):
        engine.step()
    with pytest.raises(ToolchainError, match="cache is full .*max_len"):
        engine.step()
    assert engine.generated().shape == (1, engine.capacity - 10 + 1)
    with pytest.raises(RuntimeError, match="before prefill"):
        StaticDecoderEngine(tiny_model, CPU, max_len=16).step()


def test_sliding_window_models_are_refused():
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ascend_lab.errors import ToolchainError

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                         max_window_layers=0)
    torch.manual_seed(0)
    with pytest.raises(ToolchainError, match="sliding-window"):
        StaticDecoderEngine(Qwen2ForCausalLM(config).eval(), CPU, max_len=16)


def test_the_module_imports_without_hydra():
    code = BLOCK_HEAVY_IMPORTS + (
        "import ascend_lab.runtimes.torch.static_decoder as m\n"
        "from ascend_lab.errors import ToolchainError\n"
        "assert m.ToolchainError is ToolchainError\n"
        "assert 'hydra' not in [k for k, v in sys.modules.items() if v is not None]\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor on the CPU needs a C++ compiler")
@pytest.mark.parametrize("scope", ["layer", "step"])
def test_compiled_step_gives_the_eager_tokens(tiny_model, scope):
    """fullgraph=True also proves the step has no graph break (no host read, no data-dependent
    Python branch): what graph capture needs."""
    ids, mask = _prompt(3)
    compiled = StaticDecoderEngine(tiny_model, CPU, max_len=40, compile=True, compile_scope=scope)
    compiled.prepare(3, 11, NEW_TOKENS)
    np.testing.assert_array_equal(_engine_tokens(compiled, ids, mask),
                                  _engine_tokens(StaticDecoderEngine(tiny_model, CPU, 40), ids, mask))


@pytest.mark.slow
def test_gpu_check_script_runs_end_to_end_on_the_cpu_without_hydra(tmp_path):
    out = tmp_path / "check.json"
    argv = ["gpu_static_decoder_check.py", "--tiny", "--device", "cpu", "--batches", "1,2", "--new-tokens", "12",
            "--reps", "1", "--json", str(out)]
    code = BLOCK_HEAVY_IMPORTS + (
        f"import runpy\nsys.argv = {argv!r}\n"
        "runpy.run_path('benchmarks/gpu_static_decoder_check.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "% roofline" in result.stdout
    report = json.loads(out.read_text())
    # ascend_lab's one roofline: torch's read bandwidth over the weights and the KV cache, per batch.
    assert report["env"]["model"] == "tiny" and report["bandwidth"]["read_gb_s"] > 0
    assert report["roofline_tok_s"]["2"] < 2 * report["roofline_tok_s"]["1"]  # batch 2 reads twice the cache
    rows = {(r["batch"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {(b, v) for b in (1, 2) for v in ("hf", "eager", "graph")}
    for (batch, variant), row in rows.items():
        assert "error" not in row and row["tok_s"] > 0 and row["vs_hf"] > 0
        assert row["frac_roofline"] == pytest.approx(row["tok_s"] / report["roofline_tok_s"][str(batch)], rel=1e-2)
        assert row["agree_vs_eager"] == 1.0  # float32: HF, eager and the (eager-fallback) graph agree
    assert any(n.startswith("compile_graph at batch 1 skipped on cpu") for n in report["notes"])
