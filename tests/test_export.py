"""ONNX export: graphs, parity, dynamic axes, the cache (also across processes), MLflow records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ascend_lab.config import AppConfig
from ascend_lab.config.export import ExportConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.context import JobContext
from ascend_lab.errors import AscendLabError
from ascend_lab import graph_contract as gc
from ascend_lab.export import ensure_exported, keys
from ascend_lab.graphs import cache_graph_decoder, wrapper_for
from ascend_lab.models import load_model
from ascend_lab.provenance import sha256_files
from ascend_lab.tracking import Tracker

from conftest import cli_env


class RecordingTracker(Tracker):
    def __init__(self):
        self.metrics, self.tags, self.artifacts = {}, {}, []

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, local_path, artifact_path=None):
        self.artifacts.append((Path(local_path), artifact_path))


def export(launch_dir: Path, seed: int = 0, model: ModelConfig | None = None, **export_fields):
    cfg = AppConfig(seed=seed, model=model or ModelConfig(), export=ExportConfig(**export_fields))
    tracker = RecordingTracker()
    return ensure_exported(cfg, JobContext(cfg, tracker, launch_dir, launch_dir)), tracker


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One export of tiny_qwen per graph kind, shared by the tests below."""
    launch = tmp_path_factory.mktemp("exports")
    return {graph: export(launch, graph=graph) for graph in ("hidden_states", "logits", "kv_cache")}


@pytest.fixture(scope="module")
def tiny():
    return load_model(ModelConfig(), seed=0).model


def session(exported):
    return ort.InferenceSession(str(exported.onnx_path), providers=["CPUExecutionProvider"])


def test_io_names_follow_the_contract():
    dims = gc.ModelDims(num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, hidden_size=64, vocab_size=384)
    kv = gc.GraphContract("kv_cache", dims, "float16")
    assert kv.input_names() == ["input_ids", "position_ids", "past_length", "pad_lengths", "past_key_values"]
    assert kv.output_names() == ["logits", "next_token", "present_key_values"]
    axes = kv.dynamic_axes()
    assert axes["past_key_values"] == {0: "capacity", 1: "batch"} and axes["present_key_values"] == {0: "seq", 1: "batch"}
    assert "past_length" not in axes  # [1]: static
    assert kv.cache_shape(24, 3) == (24, 3, 4, 2, 16) and kv.slot_elements(3) == 3 * 4 * 2 * 16
    assert gc.GraphContract("hidden_states", dims, "float32").output_names() == ["hidden_states"]


def test_prefill_plan_takes_the_fewest_executions_the_gears_allow():
    """One execution reads every weight once (gc.prefill_cost): padding to fewer, larger chunks wins over
    more, smaller ones; among equal counts the least padding; largest chunks first."""
    want = {16: (16,), 17: (128,), 128: (128,), 129: (128, 16), 496: (128,) * 4, 1000: (128,) * 8,
            512: (128,) * 4, 5: (16,)}
    for prompt_len, chunks in want.items():
        assert gc.plan_prefill(prompt_len, [16, 128]).chunks == chunks, prompt_len
    plan = gc.plan_prefill(14, [16, 128])
    assert plan.chunks == (16,) and plan.extra_pad == 2 and plan.padded_len == 16
    assert len(gc.plan_prefill(496, [16, 128]).chunks) == 4  # was 3 × 128 + 7 × 16 = 10
    # Padding is bounded by the cache slots left for the prompt: 1000 tokens in 1010 slots → 1008.
    bounded = gc.plan_prefill(1000, [16, 128], max_padded=1010)
    assert bounded.padded_len == 1008 and bounded.chunks == (128,) * 7 + (16,) * 7
    assert gc.plan_prefill(5, [1]).chunks == (1,) * 5
    assert gc.prefill_cost((128,) * 4) < gc.prefill_cost((128,) * 3 + (16,) * 7)
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert gc.left_pad_lengths(mask).tolist() == [2, 0]
    np.testing.assert_array_equal(gc.positions(1, 3, np.array([2, 0])), [[0, 0, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="left-padded"):
        gc.left_pad_lengths(np.array([[1, 0, 1]]))


def test_cache_key_covers_what_shapes_the_graph_only():
    versions = {"torch": "1", "transformers": "2", "onnx": "3"}

    def key(seed=0, model=None, **fields):
        return keys.cache_key(keys.key_material(model or ModelConfig(), ExportConfig(**fields), seed, versions))

    base = key()
    assert key() == base
    assert key(parity_tol=1e-9, parity_batch_size=5, cache_dir="elsewhere", artifact_max_mb=1) == base
    assert key(kv_capacity=64, prefill_chunks=[8]) == base  # the cache dim is symbolic, chunks are gears
    assert key(model=ModelConfig(cache_dir="other")) == base
    for changed in (key(seed=1), key(graph="logits"), key(opset=18), key(exporter="dynamo"),
                    key(do_constant_folding=True), key(model=ModelConfig(dtype="float16")),
                    key(model=ModelConfig(num_hidden_layers=3))):
        assert changed != base
    newer = keys.cache_key(keys.key_material(ModelConfig(), ExportConfig(), 0, {**versions, "torch": "9"}))
    assert newer != base
    pretrained = ModelConfig(weights="pretrained", model_id="qwen/x")
    assert key(seed=0, model=pretrained) == key(seed=7, model=pretrained)  # seed only seeds random weights


@pytest.mark.parametrize("graph", ["hidden_states", "logits", "kv_cache"])
def test_each_graph_exports_checks_and_matches_torch(exports, graph):
    exported, tracker = exports[graph]
    onnx.checker.check_model(str(exported.onnx_path))
    assert exported.graph == graph and not exported.cache_hit
    model = onnx.load(str(exported.onnx_path))
    assert [v.name for v in model.graph.input] == exported.input_names
    assert [v.name for v in model.graph.output] == exported.output_names
    assert model.opset_import[0].version == ExportConfig().opset == 14
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["input_ids"] == ["batch", "seq"]
    assert tracker.metrics["parity_max_abs_diff"] < 1e-3
    assert 0 <= tracker.metrics["parity_rel_l2"] < 1e-4
    assert tracker.metrics["export_cache_hit"] == 0 and tracker.metrics["export_seconds"] > 0
    assert tracker.tags["onnx_sha256"] == exported.sha256 == sha256_files([exported.onnx_path])
    meta = json.loads((exported.onnx_path.parent / "meta.json").read_text())
    assert meta["sha256"] == exported.sha256 and meta["input_names"] == exported.input_names
    if graph == "kv_cache":
        assert set(meta["parity_cases"]) == {"prefill", "decode"} and meta["parity_token_mismatches"] == 0
        assert exported.dims.num_layers == 2 and exported.dims.num_kv_heads == 2 and exported.dims.head_dim == 16
        assert dims["past_key_values"] == ["capacity", "batch", 4, 2, 16]


def kv_feeds(exported, ids, written, pads, cache):
    return {"input_ids": ids, "position_ids": gc.positions(written, ids.shape[1], pads),
            "past_length": np.array([written], np.int64), "pad_lengths": pads, "past_key_values": cache}


def test_kv_cache_graph_reproduces_hf_prefill_and_decode(exports, tiny):
    """Left-padded rows, a prefill into an empty cache, the caller's write of the new slots, a decode step:
    the last position's logits are Hugging Face's own."""
    exported, _ = exports["kv_cache"]
    sess = session(exported)
    ids = torch.randint(0, 384, (2, 11), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0
    with torch.no_grad():
        hf = tiny(input_ids=ids, attention_mask=mask, use_cache=True)
        next_ids = hf.logits[:, -1:].argmax(-1)
        step = tiny(input_ids=next_ids, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                    cache=hf.past_key_values, use_cache=True)
    pads = gc.left_pad_lengths(mask.numpy())
    cache = np.zeros(exported.contract.cache_shape(16, 2), np.float32)
    logits, token, present = sess.run(None, kv_feeds(exported, ids.numpy(), 0, pads, cache))
    np.testing.assert_allclose(logits, hf.logits[:, -1].numpy(), atol=1e-4)
    np.testing.assert_array_equal(token, next_ids[:, 0].numpy())
    assert present.shape == (11, 2, 4, 2, 16)
    cache[:11] = present
    logits, token, present = sess.run(None, kv_feeds(exported, next_ids.numpy(), 11, pads, cache))
    np.testing.assert_allclose(logits, step.logits[:, -1].numpy(), atol=1e-4)
    assert present.shape == (1, 2, 4, 2, 16)


@pytest.mark.parametrize("graph", ["hidden_states", "logits", "kv_cache"])
def test_batch_and_sequence_axes_are_really_dynamic(exports, tiny, graph):
    exported, _ = exports[graph]
    sess = session(exported)
    wrapper = wrapper_for(graph, tiny)
    generator = torch.Generator().manual_seed(9)
    # The export's dummy input was batch 3 with the 15-byte prompt (and a cache of 2 + 15 + 7 slots).
    for batch, seq, written, capacity in [(1, 4, 0, 4), (5, 15, 0, 20), (4, 1, 6, 9), (2, 23, 2, 64)]:
        ids = torch.randint(0, 384, (batch, seq), generator=generator)
        if graph == "kv_cache":
            pads = np.zeros(batch, np.int64)
            cache = torch.randn(exported.contract.cache_shape(capacity, batch), generator=generator)
            feeds = kv_feeds(exported, ids.numpy(), written, pads, cache.numpy())
        else:
            feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((batch, seq), np.int64)}
        with torch.no_grad():
            expected = wrapper(*(torch.from_numpy(np.asarray(feeds[n])) for n in exported.input_names))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = sess.run(None, feeds)
        for g, e in zip(got, expected):
            assert g.shape == tuple(e.shape)
            np.testing.assert_allclose(g, e.numpy(), atol=1e-4)


def test_kv_decoder_refuses_models_without_a_cache_api(tiny):
    tiny.config.model_type = "qwen"
    try:
        with pytest.raises(AscendLabError, match="export.graph=logits"):
            cache_graph_decoder(tiny)
    finally:
        tiny.config.model_type = "qwen2"


def test_repeat_export_hits_the_cache(tmp_path):
    first, _ = export(tmp_path, graph="logits")
    second, tracker = export(tmp_path, graph="logits")
    assert not first.cache_hit and second.cache_hit
    assert second.sha256 == first.sha256 and second.onnx_path == first.onnx_path
    assert tracker.metrics["export_cache_hit"] == 1
    assert tracker.metrics["parity_max_abs_diff"] == pytest.approx(first.extra["parity_max_abs_diff"])
    other_seed, _ = export(tmp_path, seed=1, graph="logits")
    assert not other_seed.cache_hit and other_seed.sha256 != first.sha256
    assert len([p for p in (tmp_path / "outputs" / "export_cache").iterdir() if p.is_dir()]) == 2


def test_parity_above_tolerance_fails_and_is_not_cached(tmp_path):
    with pytest.raises(AscendLabError, match=r"export.parity_tol=1e-12"):
        export(tmp_path, graph="logits", parity_tol=1e-12)
    entries = list((tmp_path / "outputs" / "export_cache").iterdir())
    assert not [p for p in entries if p.is_dir()], "a failed export must leave no cache entry or temp folder"


def test_artifact_upload_respects_the_size_limit(tmp_path):
    _, small = export(tmp_path, graph="logits")
    assert small.artifacts and small.artifacts[0][1] == "onnx"
    _, limited = export(tmp_path, graph="logits", artifact_max_mb=0.01)
    assert not limited.artifacts
    assert "not uploaded" in limited.tags["onnx_artifact"] and limited.tags["onnx_sha256"]


def test_external_data_and_int8(tmp_path):
    exported, tracker = export(tmp_path, graph="logits", external_data="always")
    data = exported.onnx_path.with_name("model.onnx.data")
    assert data.is_file() and data.stat().st_size > exported.onnx_path.stat().st_size
    assert exported.sha256 == sha256_files([exported.onnx_path, data])
    assert tracker.metrics["parity_max_abs_diff"] < 1e-3
    quantized, tracker = export(tmp_path, graph="logits", quantize="int8")
    ops = {node.op_type for node in onnx.load(str(quantized.onnx_path)).graph.node}
    # The projection weights, not only the embedding, are int8 (MatMulNBits: export.quantize's method).
    assert ops & {"MatMulNBits", "MatMulInteger"}
    # The float embedding table stays for the token lookup (a large share of tiny_qwen's 0.6 MB), so the
    # file shrinks less than the bytes read per step (tests/test_quantize.py bounds those at < 40 %).
    assert quantized.extra["onnx_size_mb"] < 0.6 * exported.extra["onnx_size_mb"]
    assert 0 < tracker.metrics["parity_max_abs_diff"] < 1.0


def test_fused_projections_export_fewer_matmuls_same_logits_and_pass_the_op_check(exports, tmp_path):
    """export.fuse_projections: one q|k|v and one gate|up MatMul per layer (three fewer), the separate
    weights gone from the file, the same logits as the plain graph, and ATC's op check still passes."""
    from ascend_lab.compile.opcheck import check_graph

    plain, _ = exports["kv_cache"]
    fused, tracker = export(tmp_path, graph="kv_cache", fuse_projections=True)
    assert fused.cache_key != plain.cache_key and tracker.metrics["parity_max_abs_diff"] < 1e-4

    def graph_facts(exported):
        model = onnx.load(str(exported.onnx_path))
        ops = [node.op_type for node in model.graph.node]
        return ops.count("MatMul"), ops.count("Split"), {i.name for i in model.graph.initializer}

    layers = plain.contract.dims.num_layers
    (plain_mm, plain_split, plain_inits), (fused_mm, fused_split, fused_inits) = graph_facts(plain), graph_facts(fused)
    assert fused_mm == plain_mm - 3 * layers and fused_split == plain_split + layers
    assert not any("q_proj" in name or "gate_proj" in name for name in fused_inits)
    assert any("q_proj" in name for name in plain_inits)
    # The fused matrices are initializers holding the same bytes (not Constant nodes, which tools that
    # read initializers, like the roofline's bytes per step, would miss).
    from ascend_lab.bench.roofline import step_weight_bytes

    extra = step_weight_bytes(fused.onnx_path) - step_weight_bytes(plain.onnx_path)
    assert 0 <= extra < 1024  # the Splits' int64 sizes

    ids = np.random.default_rng(3).integers(0, 384, (2, 7))
    pads = np.array([0, 3], np.int64)
    cache = np.zeros(plain.contract.cache_shape(16, 2), np.float32)
    want = session(plain).run(None, kv_feeds(plain, ids, 0, pads, cache))
    got = session(fused).run(None, kv_feeds(fused, ids, 0, pads, cache))
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], atol=1e-5)

    fp16, _ = export(tmp_path, model=ModelConfig(dtype="float16"), graph="kv_cache", fuse_projections=True)
    assert check_graph(fp16.onnx_path, "must_keep_origin_dtype").ok


def test_kv_cache_graph_computes_its_shapes_once_not_per_layer(exports, tmp_path):
    """Batch, sequence and capacity are read once from the inputs and rotate_half slices at constant
    offsets: a deeper model adds MatMuls, not Shape nodes. (Each layer used to read its sizes from its own
    tensors, a Shape → Gather → Unsqueeze → Concat chain per reshape that onnxruntime ran every step.)"""
    import collections

    def op_counts(exported):
        return collections.Counter(n.op_type for n in onnx.load(str(exported.onnx_path)).graph.node)

    two, _ = exports["kv_cache"]
    four, _ = export(tmp_path, graph="kv_cache", model=ModelConfig(num_hidden_layers=4))
    shallow, deep = op_counts(two), op_counts(four)
    assert deep["MatMul"] > shallow["MatMul"]
    assert deep["Shape"] == shallow["Shape"] <= 4, (shallow["Shape"], deep["Shape"])  # the inputs' sizes


def test_pretrained_local_folder_exports(tmp_path):
    tiny = load_model(ModelConfig(), seed=4)
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    model = ModelConfig(name="local_tiny", weights="pretrained", path=str(folder))
    exported, tracker = export(tmp_path, model=model, graph="kv_cache")
    assert exported.dims.vocab_size == 384 and tracker.metrics["parity_max_abs_diff"] < 1e-3
    assert exported.onnx_path.parent.name.startswith("local_tiny-kv_cache-float32-")


@pytest.mark.slow
def test_dynamo_exporter_kv_cache(tmp_path, tiny):
    exported, tracker = export(tmp_path, graph="kv_cache", exporter="dynamo")
    assert tracker.metrics["parity_max_abs_diff"] < 1e-3
    model = onnx.load(str(exported.onnx_path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output}
    assert dims["present_key_values"][:2] == ["seq", "batch"]
    ids = torch.randint(0, 384, (4, 6))
    cache = np.zeros(exported.contract.cache_shape(8, 4), np.float32)
    logits = session(exported).run(None, kv_feeds(exported, ids.numpy(), 0, np.zeros(4, np.int64), cache))[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, tiny(ids).logits[:, -1].numpy(), atol=1e-4)


@pytest.mark.slow
def test_cli_export_twice_hits_the_cache_in_mlflow(run_cli, mlflow_runs, tmp_path):
    first = run_cli("task=export")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "kv_cache" in first.stdout and "miss" in first.stdout
    second = run_cli("task=export")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "hit" in second.stdout
    client, runs = mlflow_runs(tmp_path)
    runs = sorted(runs, key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.metrics["export_cache_hit"] for r in runs] == [0, 1]
    assert runs[0].data.tags["onnx_sha256"] == runs[1].data.tags["onnx_sha256"]
    assert runs[0].data.tags["export_cache_key"] == runs[1].data.tags["export_cache_key"]
    assert runs[0].data.metrics["parity_max_abs_diff"] < 1e-3
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "onnx")]
    assert "onnx/model.onnx" in artifacts and "onnx/meta.json" in artifacts


@pytest.mark.slow
def test_cli_parity_failure_exits_non_zero_naming_the_key(run_cli, mlflow_runs, tmp_path):
    result = run_cli("task=export", "export.graph=logits", "export.parity_tol=1e-12")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "export.parity_tol=1e-12" in output and "Traceback" not in output
    _, runs = mlflow_runs(tmp_path)
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.metrics["parity_max_abs_diff"] > 1e-12


@pytest.mark.slow
def test_parallel_jobs_export_once(tmp_path, mlflow_runs):
    """Two processes asking for the same key at once: one exports, the other waits and hits."""
    from ascend_lab.config.tracking import TrackingConfig
    from ascend_lab.tracking import prepare_store

    # As in a sweep, the store exists before the jobs start (two processes creating a fresh
    # SQLite store at the same instant race in MLflow's schema migration; not what is tested here).
    prepare_store(TrackingConfig(), tmp_path)
    command = [sys.executable, "-m", "ascend_lab.run", "task=export", "export.graph=logits"]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    _, runs = mlflow_runs(tmp_path)
    assert sorted(r.data.metrics["export_cache_hit"] for r in runs) == [0, 1]
    assert len({r.data.tags["onnx_sha256"] for r in runs}) == 1
    cache_dir = tmp_path / "outputs" / "export_cache"
    assert len([p for p in cache_dir.iterdir() if p.is_dir()]) == 1


def test_float16_export_runs_attention_softmax_in_float32(tmp_path):
    """The attention softmax computes in float32 inside the float16 graph, as transformers' Qwen2 does: the
    Cast to float32 comes before every Softmax and the Cast back to float16 after it (softmax(dtype=float32)
    exports as Softmax → Cast, a float16 softmax)."""
    fp16, _ = export(tmp_path, model=ModelConfig(dtype="float16"), graph="kv_cache")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16.onnx_path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    softmaxes = [node for node in model.graph.node if node.op_type == "Softmax"]
    assert len(softmaxes) == fp16.contract.dims.num_layers
    for node in softmaxes:
        assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
        cast_in = producers[node.input[0]]
        assert cast_in.op_type == "Cast" and types[cast_in.input[0]] == onnx.TensorProto.FLOAT16
        [cast_out] = consumers[node.output[0]]
        assert cast_out.op_type == "Cast" and cast_out.attribute[0].i == onnx.TensorProto.FLOAT16
