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
from ascend_lab.export import cache, ensure_exported
from ascend_lab.export.wrappers import KVCacheDecoder, dynamic_axes, empty_past, io_names, wrapper_for
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


def test_io_names_follow_the_convention():
    inputs, outputs = io_names("kv_cache", 2)
    assert inputs == ["input_ids", "attention_mask", "past_key_values.0.key", "past_key_values.0.value",
                      "past_key_values.1.key", "past_key_values.1.value"]
    assert outputs == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    axes = dynamic_axes("kv_cache", 2)
    assert axes["attention_mask"] == {0: "batch", 1: "total_seq"}
    assert axes["past_key_values.1.value"] == {0: "batch", 2: "past_seq"}
    assert axes["present.0.key"] == {0: "batch", 2: "total_seq"}
    assert io_names("hidden_states", 2) == (["input_ids", "attention_mask"], ["hidden_states"])


def test_cache_key_covers_what_shapes_the_graph_only():
    versions = {"torch": "1", "transformers": "2", "onnx": "3"}

    def key(seed=0, model=None, **fields):
        return cache.cache_key(cache.key_material(model or ModelConfig(), ExportConfig(**fields), seed, versions))

    base = key()
    assert key() == base
    assert key(parity_tol=1e-9, parity_batch_size=5, cache_dir="elsewhere", artifact_max_mb=1) == base
    assert key(model=ModelConfig(cache_dir="other")) == base
    for changed in (key(seed=1), key(graph="logits"), key(opset=18), key(exporter="dynamo"),
                    key(do_constant_folding=True), key(model=ModelConfig(dtype="float16")),
                    key(model=ModelConfig(num_hidden_layers=3))):
        assert changed != base
    newer = cache.cache_key(cache.key_material(ModelConfig(), ExportConfig(), 0, {**versions, "torch": "9"}))
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
    assert model.opset_import[0].version == 17
    dims = {v.name: [d.dim_param for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["input_ids"] == ["batch", "seq"]
    assert tracker.metrics["parity_max_abs_diff"] < 1e-3
    assert 0 <= tracker.metrics["parity_rel_l2"] < 1e-4
    assert tracker.metrics["export_cache_hit"] == 0 and tracker.metrics["export_seconds"] > 0
    assert tracker.tags["onnx_sha256"] == exported.sha256 == sha256_files([exported.onnx_path])
    meta = json.loads((exported.onnx_path.parent / "meta.json").read_text())
    assert meta["sha256"] == exported.sha256 and meta["input_names"] == exported.input_names
    if graph == "kv_cache":
        assert set(meta["parity_cases"]) == {"prefill", "decode"}
        assert exported.num_layers == 2 and exported.num_kv_heads == 2 and exported.head_dim == 16


def _hf_next_token_logits(model, ids, steps):
    """HF's own forward with use_cache: prefill logits, then one decode step's, and the tokens fed."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        next_ids = out.logits[:, -1:].argmax(-1)
        mask = torch.ones(ids.shape[0], ids.shape[1] + 1, dtype=torch.long)
        step = model(input_ids=next_ids, attention_mask=mask, cache=out.cache, use_cache=True)
    return out.logits[:, -1], next_ids, step.logits[:, -1]


def test_kv_cache_graph_reproduces_hf_prefill_and_decode(exports, tiny):
    exported, _ = exports["kv_cache"]
    sess = session(exported)
    ids = torch.randint(0, 384, (1, 11), generator=torch.Generator().manual_seed(5))
    hf_prefill, next_ids, hf_decode = _hf_next_token_logits(tiny, ids, 1)

    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((1, 11), np.int64)}
    feeds.update({n: t.numpy() for n, t in zip(exported.input_names[2:], empty_past(tiny.config, 1, torch.float32))})
    logits, *present = sess.run(None, feeds)
    np.testing.assert_allclose(logits[:, -1], hf_prefill.numpy(), atol=1e-4)
    assert present[0].shape == (1, 2, 11, 16)

    feeds = {"input_ids": next_ids.numpy(), "attention_mask": np.ones((1, 12), np.int64),
             **dict(zip(exported.input_names[2:], present))}
    logits, *present = sess.run(None, feeds)
    np.testing.assert_allclose(logits[:, -1], hf_decode.numpy(), atol=1e-4)
    assert present[0].shape == (1, 2, 12, 16)


@pytest.mark.parametrize("graph", ["hidden_states", "logits", "kv_cache"])
def test_batch_and_sequence_axes_are_really_dynamic(exports, tiny, graph):
    exported, _ = exports[graph]
    sess = session(exported)
    wrapper = wrapper_for(graph, tiny)
    generator = torch.Generator().manual_seed(9)
    # The export's dummy input was batch 3 with the 15-byte prompt (and a past of 3).
    for batch, seq, past in [(1, 4, 0), (5, 15, 0), (4, 1, 6), (2, 23, 2)]:
        if graph != "kv_cache" and past:
            continue
        ids = torch.randint(0, 384, (batch, seq), generator=generator)
        mask = torch.ones(batch, past + seq, dtype=torch.long)
        inputs = (ids, mask)
        if graph == "kv_cache":
            inputs += tuple(empty_past(tiny.config, batch, torch.float32, past, generator))
        with torch.no_grad():
            expected = wrapper(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = sess.run(None, {n: t.numpy() for n, t in zip(exported.input_names, inputs)})
        for g, e in zip(got, expected):
            assert g.shape == tuple(e.shape)
            np.testing.assert_allclose(g, e.numpy(), atol=1e-4)


def test_kv_decoder_refuses_models_without_a_cache_api(tiny):
    tiny.config.model_type = "qwen"
    try:
        with pytest.raises(AscendLabError, match="export.graph=logits"):
            KVCacheDecoder(tiny)
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


def test_pretrained_local_folder_exports(tmp_path):
    tiny = load_model(ModelConfig(), seed=4)
    folder = tmp_path / "ckpt"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    model = ModelConfig(name="local_tiny", weights="pretrained", path=str(folder))
    exported, tracker = export(tmp_path, model=model, graph="kv_cache")
    assert exported.vocab_size == 384 and tracker.metrics["parity_max_abs_diff"] < 1e-3
    assert exported.onnx_path.parent.name.startswith("local_tiny-kv_cache-")


@pytest.mark.slow
def test_dynamo_exporter_kv_cache(tmp_path, tiny):
    exported, tracker = export(tmp_path, graph="kv_cache", exporter="dynamo")
    assert tracker.metrics["parity_max_abs_diff"] < 1e-3
    model = onnx.load(str(exported.onnx_path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output}
    assert dims["present.0.key"][0] == "batch" and dims["present.0.key"][2] == "total_seq"
    ids = torch.randint(0, 384, (4, 6))
    feeds = {"input_ids": ids.numpy(), "attention_mask": np.ones((4, 6), np.int64),
             **{n: t.numpy() for n, t in zip(exported.input_names[2:], empty_past(tiny.config, 4, torch.float32))}}
    logits = session(exported).run(None, feeds)[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, tiny(ids).logits.numpy(), atol=1e-4)


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
