"""The CPU derived graph's fused attention (ascend_lab/export/fused_attention.py) on tiny_qwen: an int4 export's
q/k/v MatMulNBits pack into one and keep the export's logits and tokens, left padding included; the rotary tables
are the export's own; a cache larger than they cover is refused before anything runs; a graph the fusion does not
know is a clear error. (The float graph's node types, in-place cache and tokens against torch: test_runtimes.py;
rows moved by the serve scheduler: test_serve_scheduler.py.)"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from ascend_lab.bench.generation import greedy_generate
from ascend_lab.device import HostTimer
from ascend_lab.errors import AscendLabError


@pytest.fixture(scope="module")
def int4_export(tmp_path_factory):
    from test_runtimes import _context

    from ascend_lab.export import ensure_exported

    cfg, ctx = _context(tmp_path_factory.mktemp("launch4"), "runtime=onnxruntime", "export.quantize=int4",
                        "export.int4_block_size=16")
    return ensure_exported(cfg, ctx)


def _engine(path, exported):
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    engine = OnnxRuntime(path, exported.contract, intra_op_threads=1).engine(64, 1024)
    engine.keep_logits = True
    return engine


def test_int4_projections_pack_and_keep_the_exports_logits(int4_export):
    import onnx
    from onnx import helper

    from ascend_lab.export.optimize import optimized_graph

    dims = int4_export.dims
    fused = optimized_graph(int4_export, dims.num_heads, dims.hidden_size)
    graph = onnx.load(str(fused)).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    assert ops["GroupQueryAttention"] == dims.num_layers and ops["GatherBlockQuantized"] == 1
    assert ops["MatMulNBits"] == 5 * dims.num_layers + 1  # q|k|v, o, gate, up, down; the LM head
    qkv = next(n for n in graph.node if n.name.endswith("layer0/qkv_proj"))
    attrs = {a.name: helper.get_attribute_value(a) for a in qkv.attribute}
    assert (attrs["N"], attrs["bits"], attrs["block_size"]) == ((dims.num_heads + 2 * dims.num_kv_heads)
                                                                * dims.head_dim, 4, 16)
    # Nothing float of the projections is left behind, and no weight is held twice.
    names = [i.name for i in graph.initializer]
    assert not [n for n in names if "q_proj.weight" in n or "k_proj.weight" in n] and len(names) == len(set(names))
    ids = np.random.default_rng(5).integers(0, dims.vocab_size, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, :4] = mask[2, :9] = 0  # left padding: the first prompt's rotary positions differ per row
    exported_run = greedy_generate(_engine(int4_export.onnx_path, int4_export), ids, mask, 12, HostTimer)
    engine = _engine(fused, int4_export)
    fused_run = greedy_generate(engine, ids, mask, 12, HostTimer)
    np.testing.assert_array_equal(fused_run.tokens, exported_run.tokens)
    reference = _engine(int4_export.onnx_path, int4_export)
    greedy_generate(reference, ids, mask, 12, HostTimer)
    for a, b in zip(reference.logits, engine.logits):
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)


def test_rotary_tables_are_the_exports_own(int4_export):
    import onnx

    from ascend_lab.export.fused_attention import rotary_tables

    model = onnx.load(str(int4_export.onnx_path))
    cos, sin = rotary_tables(model, 40, int4_export.dims.head_dim, onnx.TensorProto.FLOAT)
    dim = int4_export.dims.head_dim
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float32) / dim))  # tiny_qwen's rope_theta
    angles = np.arange(40, dtype=np.float32)[:, None] * inv_freq[None, :]
    np.testing.assert_allclose(cos, np.cos(angles), atol=1e-6)
    np.testing.assert_allclose(sin, np.sin(angles), atol=1e-6)


def test_a_cache_beyond_the_rotary_tables_is_refused(int4_export):
    from ascend_lab.export.fused_attention import rotary_slots
    from ascend_lab.export.optimize import optimized_graph
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    dims = int4_export.dims
    backend = OnnxRuntime(optimized_graph(int4_export, dims.num_heads, dims.hidden_size), int4_export.contract,
                          intra_op_threads=1).cache_backend()
    assert backend.in_place and backend.max_capacity == rotary_slots(512)  # tiny_qwen's max_position_embeddings
    with pytest.raises(AscendLabError, match=r"a cache of 32784 slots is more than the fused graph's rotary tables "
                                             r"cover \(32768 positions.*lower export.kv_capacity to at most 32768"):
        backend.allocate(1, 32784)
    backend.allocate(1, 32)
    assert backend.capacity == 32


def test_a_graph_the_fusion_does_not_know_is_a_clear_error(int4_export):
    import onnx

    from ascend_lab.export.fused_attention import fuse_attention

    model = onnx.load(str(int4_export.onnx_path))
    for init in model.graph.initializer:
        init.name = init.name.replace("layers.1.self_attn.v_proj", "layers.1.attn.value")
    for node in model.graph.node:
        node.input[:] = [i.replace("layers.1.self_attn.v_proj", "layers.1.attn.value") for i in node.input]
    with pytest.raises(AscendLabError, match=r"expected one matmul by a stored layers.1.self_attn.v_proj.weight, "
                                             r"found 0; the attention fusion does not know this graph"):
        fuse_attention(model, int4_export.dims.num_heads)


@pytest.mark.parametrize("bits", [None, 4])
@pytest.mark.parametrize("bias_scale", [0.0, 0.5])
def test_packed_projections_compute_the_three_with_their_bias(tmp_path, bits, bias_scale):
    """q, k and v (float MatMul or 4-bit MatMulNBits) with a bias each pack into one matmul whose output is the three
    outputs side by side: a bias of zeros leaves no node or input behind; another goes into MatMulNBits' bias input
    or one Add after a float MatMul."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from ascend_lab.export.fused_attention import _Graph, pack_projections

    rng = np.random.default_rng(3)
    widths, inits, nodes = (32, 16, 16), [], []
    for j, width in enumerate(widths):
        inits += [numpy_helper.from_array(rng.standard_normal((64, width)).astype(np.float32), f"w{j}"),
                  numpy_helper.from_array((bias_scale * rng.standard_normal(width)).astype(np.float32), f"b{j}")]
        nodes += [helper.make_node("MatMul", ["x", f"w{j}"], [f"m{j}"], name=f"mm{j}"),
                  helper.make_node("Add", [f"m{j}", f"b{j}"], [f"y{j}"], name=f"add{j}")]
    outputs = [helper.make_tensor_value_info(f"y{j}", TensorProto.FLOAT, [3, w]) for j, w in enumerate(widths)]
    model = helper.make_model(helper.make_graph(nodes, "qkv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                             [3, 64])],
                                                outputs, inits), opset_imports=[helper.make_opsetid("", 17)])
    if bits:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=16, is_symmetric=True)
        quantizer.process()
        model = quantizer.model.model
    x = rng.standard_normal((3, 64)).astype(np.float32)
    expected = np.concatenate(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x}), axis=1)

    g = _Graph(model.graph)
    matmuls = [g.producer[f"m{j}"] for j in range(3)]
    new_nodes, new_inits, packed = pack_projections(g, matmuls, [g.bias(m) for m in matmuls], "qkv")
    assert len(new_nodes) == (2 if bias_scale and not bits else 1)
    assert (len(new_nodes[0].input) == 6) == bool(bias_scale and bits)  # MatMulNBits' bias input
    used = {i for n in new_nodes for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used] + new_inits
    packed_model = helper.make_model(
        helper.make_graph(new_nodes, "packed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
                          [helper.make_tensor_value_info(packed, TensorProto.FLOAT, [3, sum(widths)])], kept),
        opset_imports=list(model.opset_import))
    (got,) = ort.InferenceSession(packed_model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
