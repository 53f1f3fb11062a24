"""int8 weight quantisation and derived graphs on tiny_qwen: the weight transposes fold exactly,
both int8 methods quantise every weight matmul, the result loads and generates with its agreement
to the float graph measured, the step bytes shrink, and derived graphs are built once."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from ascend_lab import artifact_cache
from ascend_lab.bench.generation import greedy_generate
from ascend_lab.device import HostTimer

WEIGHT_MATMULS = 2 * 7 + 1  # q, k, v, o, gate, up, down per layer + the LM head


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from test_runtimes import _context

    from ascend_lab.export import ensure_exported

    launch = tmp_path_factory.mktemp("launch")
    cfg, ctx = _context(launch, "runtime=onnxruntime")
    return ensure_exported(cfg, ctx)


def engine_on(path, exported, new_tokens: int = 32):
    """The generation engine over an onnxruntime session of ``path`` (a graph with ``exported``'s contract)."""
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    runtime = OnnxRuntime(path, exported.contract, intra_op_threads=1)
    engine = runtime.engine(64 + new_tokens, 1024)
    engine.keep_logits = True
    return engine


def _op_counts(path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def test_fold_weight_transposes_is_exact_and_keeps_shared_tables():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ascend_lab.export.quantize import fold_weight_transposes, weight_matmuls

    rng = np.random.default_rng(0)
    table = rng.standard_normal((10, 4)).astype(np.float32)  # [vocab, hidden], tied: Gather and LM head
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["x"]),
         helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "table_t"], ["logits"])],
        "tied", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10])],
        [numpy_helper.from_array(table, "table")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ids = np.array([3, 7], dtype=np.int64)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]

    before = run(model)
    assert weight_matmuls(model) == []
    assert fold_weight_transposes(model) == 1
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Gather", "MatMul"]
    assert sorted(i.name for i in model.graph.initializer) == ["table", "table.T"]  # the Gather keeps its table
    assert len(weight_matmuls(model)) == 1
    np.testing.assert_array_equal(run(model), before)


@pytest.mark.parametrize("method, quant_op", [("matmul_nbits", "MatMulNBits"), ("dynamic", "MatMulInteger")])
def test_int8_graph_quantises_every_weight_and_generates(exported, method, quant_op):
    from ascend_lab.bench.roofline import step_weight_bytes
    from ascend_lab.export.optimize import int8_graph

    path = int8_graph(exported, method)
    assert path.parent.name == f"{exported.onnx_path.parent.name}~int8-{method}"
    assert artifact_cache.read_meta(path.parent)["source_sha256"] == exported.sha256
    ops = _op_counts(path)
    assert ops[quant_op] == WEIGHT_MATMULS
    assert ops["MatMul"] == 2 * 4  # only the attention matmuls (scores and × values, cache and new) stay float
    # int8 weights (+ scales) instead of float32: about a quarter of the bytes each step reads.
    assert step_weight_bytes(path) < 0.4 * step_weight_bytes(exported.onnx_path)

    ids = np.random.default_rng(7).integers(0, 384, size=(8, 12))
    mask = np.ones_like(ids)
    float_engine, int8_engine = engine_on(exported.onnx_path, exported), engine_on(path, exported)
    for engine in (float_engine, int8_engine):
        engine.prepare(8, 12, 32)
    reference = greedy_generate(float_engine, ids, mask, 32, HostTimer).tokens
    quantised = greedy_generate(int8_engine, ids, mask, 32, HostTimer).tokens
    assert quantised.shape == (8, 32)
    agreement = float((reference == quantised).mean())
    print(f"int8 {method}: greedy agreement with float32 over 8 prompts × 32 tokens: {agreement:.1%}")
    # Random weights give flat logits: near-ties flip under any rounding and the continuation diverges
    # after the first flip, so token agreement is only printed. What int8 must keep is the logits.
    float_engine.prefill(ids, mask)
    int8_engine.prefill(ids, mask)
    float_logits, int8_logits = float_engine.logits[-1], int8_engine.logits[-1]
    diff = np.abs(float_logits - int8_logits)
    assert diff.mean() < 0.05 * float_logits.std()
    cosine = (float_logits * int8_logits).sum(-1) / (
        np.linalg.norm(float_logits, axis=-1) * np.linalg.norm(int8_logits, axis=-1))
    print(f"int8 {method}: cosine of the prefill logits per prompt: {np.round(cosine, 5)}")
    assert cosine.min() > 0.998  # per-channel weight scales along K (the bug that was) give ≈ 0.995


def test_derived_graphs_are_built_once(exported, monkeypatch):
    from ascend_lab.export import optimize

    calls = []

    def build(src, out):
        calls.append(src)
        out.write_bytes(src.read_bytes())

    first = optimize.derived_graph(exported.onnx_path, "copy", build, exported.sha256)
    second = optimize.derived_graph(exported.onnx_path, "copy", build, exported.sha256)
    assert first == second and len(calls) == 1
    assert artifact_cache.read_meta(first.parent)["variant"] == "copy"
    # The export cache entry itself is untouched (its sha256 covers the files beside model.onnx).
    assert sorted(p.name for p in exported.onnx_path.parent.iterdir()) == ["meta.json", "model.onnx"]


def test_derived_graph_of_an_older_format_is_rebuilt(exported, monkeypatch, caplog):
    """A derived entry written by older code (another DERIVED_FORMAT in its meta) is rebuilt, not reused
    silently: a graph quantised the old way must not stand in for the new one."""
    import json

    from ascend_lab.export import optimize

    calls = []

    def build(src, out):
        calls.append(src)
        out.write_bytes(src.read_bytes())

    path = optimize.derived_graph(exported.onnx_path, "stale", build, exported.sha256)
    meta_file = path.parent / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format": optimize.DERIVED_FORMAT - 1}))
    with caplog.at_level("WARNING"):
        again = optimize.derived_graph(exported.onnx_path, "stale", build, exported.sha256)
    assert again == path and len(calls) == 2
    assert artifact_cache.read_meta(again.parent)["format"] == optimize.DERIVED_FORMAT
    assert "was built by older code (its format is" in caplog.text
    optimize.derived_graph(exported.onnx_path, "stale", build, exported.sha256)
    assert len(calls) == 2  # the rebuilt entry is a hit


def test_transformer_optimizer_fuses_rmsnorm_and_keeps_the_tokens(exported):
    from ascend_lab.export.optimize import optimized_graph

    path = optimized_graph(exported, num_heads=4, hidden_size=64)
    ops = _op_counts(path)
    assert ops["SkipSimplifiedLayerNormalization"] + ops["SimplifiedLayerNormalization"] == 2 * 2 + 1
    assert ops["Pow"] == 0  # no RMSNorm left unfused
    ids = np.random.default_rng(8).integers(0, 384, size=(2, 9))
    mask = np.ones_like(ids)
    mask[1, :2] = 0
    reference = greedy_generate(engine_on(exported.onnx_path, exported), ids, mask, 16, HostTimer).tokens
    fused = greedy_generate(engine_on(path, exported), ids, mask, 16, HostTimer).tokens
    np.testing.assert_array_equal(fused, reference)


def test_unknown_int8_method_is_a_clear_error(tmp_path):
    from ascend_lab.errors import AscendLabError
    from ascend_lab.export.quantize import quantize_int8

    with pytest.raises(AscendLabError, match="matmul_nbits, dynamic"):
        quantize_int8(tmp_path / "model.onnx", False, "int4")


# -- int4 (export.quantize=int4) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def int4_context(tmp_path_factory):
    from test_runtimes import _context

    launch = tmp_path_factory.mktemp("launch4")
    return _context(launch, "runtime=onnxruntime", "export.quantize=int4", "export.int4_block_size=16")


def test_int4_export_quantises_every_weight_to_4_bits_and_generates(int4_context, exported):
    """export.quantize=int4: every weight matmul becomes a 4-bit MatMulNBits with the configured block size and
    accuracy level (through onnxruntime's quantiser), the weights take under a sixth of their float bytes, and
    the graph generates with logits close to the float graph's."""
    import onnx
    from onnx import helper

    from ascend_lab.export import ensure_exported

    cfg, ctx = int4_context
    int4 = ensure_exported(cfg, ctx)
    assert int4.cache_key != exported.cache_key and int4.extra["key_material"]["export"]["int4_block_size"] == 16
    graph = onnx.load(str(int4.onnx_path)).graph
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == WEIGHT_MATMULS
    # The embedding table too, in 4 bits: no float table is left.
    assert [n.op_type for n in graph.node if n.op_type.startswith("Gather") and n.input[1] == "input_ids"] == [
        "GatherBlockQuantized"]
    assert not [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
                and not i.name.endswith("_scales")]
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (4, 16, 4)
    float_engine, int4_engine = engine_on(exported.onnx_path, exported), engine_on(int4.onnx_path, int4)
    ids = np.random.default_rng(3).integers(0, 384, size=(4, 12))
    mask = np.ones_like(ids)
    for engine in (float_engine, int4_engine):
        engine.prefill(ids, mask)
    a, b = float_engine.logits[-1], int4_engine.logits[-1]
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    print(f"int4: cosine of the prefill logits per prompt: {np.round(cosine, 5)}")
    assert cosine.min() > 0.98


def test_int4_graph_is_refused_by_the_op_check_before_atc(int4_context):
    """ATC never sees com.microsoft ops: the op check refuses an int4 graph with its clear message."""
    from ascend_lab.compile import check_ops
    from ascend_lab.errors import AscendLabError
    from ascend_lab.export import ensure_exported

    cfg, ctx = int4_context
    with pytest.raises(AscendLabError) as failure:
        check_ops(cfg, ctx.tracker, ensure_exported(cfg, ctx).onnx_path)
    message = str(failure.value)
    for text in ("(com.microsoft::MatMulNBits): domain 'com.microsoft' has no ATC parser", "atc was not run",
                 "drop export.quantize (its int8/int4 ops are onnxruntime's own", "AMCT"):
        assert text in message, text


def test_int4_keys_are_hashed_only_with_int4_and_refused_without_it():
    from test_runtimes import _context

    from ascend_lab.config.export import ExportConfig
    from ascend_lab.config.model import ModelConfig
    from ascend_lab.errors import ConfigError
    from ascend_lab.export.keys import cache_key, key_material

    def key(**fields):
        return cache_key(key_material(ModelConfig(), ExportConfig(**fields), 0, versions={}))

    assert "int4_block_size" not in key_material(ModelConfig(), ExportConfig(quantize="int8"), 0, versions={})["export"]
    assert key(quantize="int4") != key(quantize="int4", int4_block_size=64) != key(quantize="int4",
                                                                                  int4_accuracy_level=0)
    assert key(quantize="int4") != key(quantize="int8")
    with pytest.raises(ConfigError, match=r"export.int4_block_size=64: only applies with export.quantize=int4 "
                                          r"\(got export.quantize=int8\)"):
        ExportConfig(quantize="int8", int4_block_size=64)
    with pytest.raises(ConfigError, match=r"export.int4_accuracy_level=1: only applies with export.quantize=int4"):
        _context(None, "export.int4_accuracy_level=1")
    with pytest.raises(ConfigError, match=r"export.int4_block_size=48: must be a power of 2, at least 16"):
        ExportConfig(quantize="int4", int4_block_size=48)
    with pytest.raises(ConfigError, match=r"export.int4_accuracy_level=5: valid values are 0, 1, 2, 3, 4"):
        ExportConfig(quantize="int4", int4_accuracy_level=5)


@pytest.mark.slow
def test_cli_int4_accuracy_gate(run_cli, tmp_path):
    """task=accuracy gates an int4 candidate with the int4 thresholds (accuracy.gate.int4)."""
    proc = run_cli("task=accuracy", "runtime=onnxruntime", "export.quantize=int4", "accuracy.new_tokens=4",
                   "tracking=off")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "candidate: onnxruntime int4 on cpu" in proc.stdout
    assert "accuracy gate passed (int4 thresholds)" in proc.stdout and "accuracy.gate.int4.min_cosine" in proc.stdout
    failing = run_cli("task=accuracy", "runtime=onnxruntime", "export.quantize=int4", "accuracy.new_tokens=4",
                      "tracking=off", "accuracy.gate.int4.min_cosine=1.0", "accuracy.layer_report=never")
    assert failing.returncode == 1 and "Traceback" not in failing.stderr
    assert "accuracy gate FAILED (int4 thresholds)" in failing.stderr
