"""Compiling with ATC (ascend_lab.compile): the pure shape derivation and command builder (toy graphs of
the hidden_states and kv_cache contracts), the stand-in `atc` agreeing with them, the op check that
refuses a graph before any `atc` call, the subprocess path (success, failures, timeout, missing
toolkit, set_env.sh), both .om name forms, the content-addressed compile cache (hits, damage, two
concurrent compiles of one key running `atc` once), the shipped kv_cache graph of tiny_qwen, and
task=compile through the real CLI, all recorded in real MLflow stores."""

from __future__ import annotations

import csv
import json
import hashlib
import io
import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from ascend_lab import artifact_cache
from ascend_lab.cann import toolkit as cann_toolkit
from ascend_lab.compile import CompiledModel, OpCheckError, ensure_compiled, opcheck, plan_compile
from ascend_lab.compile.command import build_atc_command, cache_key
from ascend_lab.compile.runner import SUCCESS_LINE, AtcError, find_om
from ascend_lab.compile.shapes import GraphInput, derive_input_shapes, dim_role, effective_mode, read_graph_inputs
from ascend_lab.config import AppConfig, validate
from ascend_lab.config.atc import SOC_VERSIONS, AtcConfig
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.config.export import ExportConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.errors import ConfigError, ToolchainError
from ascend_lab.tracking import Tracker

from conftest import cli_env

FAKES = Path(__file__).resolve().parent / "fakes"
FAKE_BIN = FAKES / "bin"
sys.path.insert(0, str(FAKES))
from om_format import read_om  # noqa: E402

HISTOGRAM = "atc_op_histogram.csv"
AUTO_GEARS = [[1, 1], [16, 16], [128, 128]]  # decode step + export.prefill_chunks (16, 128), one value per -1


# ---------------------------------------------------------------------------------------------
# Toy graphs with the exporters' I/O contracts (ascend_lab.graph_contract)


def _write_onnx(path: Path, inputs, outputs, nodes, initializers=(), opsets=(("", 17),), check=True) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "toy", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    if check:
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, array) -> object:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array), name)


def hidden_states_onnx(path: Path, dims=("batch", "seq")) -> Path:
    """input_ids, attention_mask [batch, seq] int64 → hidden_states [batch, seq, 8] float32."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=T.FLOAT),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=T.FLOAT),
             helper.make_node("Mul", ["f", "m"], ["fm"]),
             helper.make_node("Unsqueeze", ["fm", "axis"], ["u"]),
             helper.make_node("Mul", ["u", "w"], ["hidden_states"])]
    return _write_onnx(
        path,
        [helper.make_tensor_value_info("input_ids", T.INT64, list(dims)),
         helper.make_tensor_value_info("attention_mask", T.INT64, list(dims))],
        [helper.make_tensor_value_info("hidden_states", T.FLOAT, [*dims, 8])],
        nodes, [_const("axis", np.array([2], np.int64)), _const("w", np.arange(8, dtype=np.float32))])


def kv_cache_onnx(path: Path, layers: int = 2, kv_heads: int = 2, head_dim: int = 4, vocab: int = 10) -> Path:
    """The kv_cache contract in float16: input_ids, position_ids [batch, seq] int64, past_length [1],
    pad_lengths [batch], past_key_values [capacity, batch, 2·layers, kv_heads, dim] → logits [batch, vocab],
    next_token [batch], present_key_values [seq, batch, 2·layers, kv_heads, dim]. Only ops and dtypes
    both op tables (the package's and the stand-in's) list under must_keep_origin_dtype."""
    from onnx import TensorProto as T
    from onnx import helper

    f16 = T.FLOAT16
    cache = ["capacity", "batch", 2 * layers, kv_heads, head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", T.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("position_ids", T.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("past_length", T.INT64, [1]),
              helper.make_tensor_value_info("pad_lengths", T.INT64, ["batch"]),
              helper.make_tensor_value_info("past_key_values", f16, cache)]
    outputs = [helper.make_tensor_value_info("logits", f16, ["batch", vocab]),
               helper.make_tensor_value_info("next_token", T.INT64, ["batch"]),
               helper.make_tensor_value_info("present_key_values", f16, ["seq", *cache[1:]])]
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids"], to=f16, name="/Cast"),
             helper.make_node("Cast", ["position_ids"], ["pos"], to=f16, name="/Cast_1"),
             helper.make_node("Add", ["ids", "pos"], ["h"], name="/Add"),
             helper.make_node("ReduceSum", ["h", "sum_axes"], ["last"], keepdims=1, name="/ReduceSum"),
             helper.make_node("MatMul", ["last", "lm_head"], ["logits"], name="/lm_head/MatMul"),
             helper.make_node("ArgMax", ["logits"], ["next_token"], axis=1, keepdims=0, name="/ArgMax"),
             helper.make_node("Transpose", ["h"], ["ht"], perm=[1, 0], name="/Transpose"),
             helper.make_node("Unsqueeze", ["ht", "kv_axes"], ["hu"], name="/Unsqueeze"),
             helper.make_node("Mul", ["hu", "kv_ones"], ["present_key_values"], name="/Mul")]
    inits = [_const("sum_axes", np.array([1], np.int64)),
             _const("lm_head", np.arange(vocab, dtype=np.float16)[None, :]),
             _const("kv_axes", np.array([2, 3, 4], np.int64)),
             _const("kv_ones", np.ones((2 * layers, kv_heads, head_dim), np.float16))]
    return _write_onnx(path, inputs, outputs, nodes, inits)


def cumsum_onnx(path: Path) -> Path:
    """position_ids = CumSum(input_ids, 1) in int64, over a graph input (not constant-folded): what the
    old logits/kv_cache graphs computed positions with. ATC's CumSum takes float16, float, int32."""
    from onnx import TensorProto as T
    from onnx import helper

    return _write_onnx(
        path, [helper.make_tensor_value_info("input_ids", T.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("position_ids", T.INT64, ["batch", "seq"])],
        [helper.make_node("CumSum", ["input_ids", "axis"], ["position_ids"], name="/model/CumSum")],
        [_const("axis", np.array(1, np.int64))])


def matmul_nbits_onnx(path: Path) -> Path:
    """onnxruntime's com.microsoft::MatMulNBits (what export.quantize=int8 emits) between two ai.onnx ops."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=T.FLOAT, name="/Cast"),
             helper.make_node("MatMulNBits", ["xf", "w", "s"], ["y"], domain="com.microsoft",
                              name="/model/layers.0/mlp/MatMul_Q8", K=8, N=4, bits=8, block_size=16)]
    return _write_onnx(
        path, [helper.make_tensor_value_info("x", T.FLOAT, ["batch", "seq", 8])],
        [helper.make_tensor_value_info("y", T.FLOAT, ["batch", "seq", 4])], nodes,
        [_const("w", np.zeros((4, 1, 16), np.uint8)), _const("s", np.ones((4,), np.float32))],
        opsets=(("", 17), ("com.microsoft", 1)), check=False)


HS_INPUTS = [GraphInput("input_ids", ("batch", "seq"), "int64"),
             GraphInput("attention_mask", ("batch", "seq"), "int64")]
KV_INPUTS = [GraphInput("input_ids", ("batch", "seq"), "int64"),
             GraphInput("position_ids", ("batch", "seq"), "int64"),
             GraphInput("past_length", (1,), "int64"),
             GraphInput("pad_lengths", ("batch",), "int64"),
             GraphInput("past_key_values", ("capacity", "batch", 4, 2, 4), "float16")]
KV_DEFAULT_SHAPE = ("input_ids:1,-1;position_ids:1,-1;past_length:1;pad_lengths:1;"
                    "past_key_values:1024,1,4,2,4")


def shapes_for(inputs, bench: BenchmarkConfig | None = None, export: ExportConfig | None = None, **atc_fields):
    cfg = AtcConfig(**atc_fields)
    return cfg, derive_input_shapes(inputs, cfg, bench or BenchmarkConfig(), export or ExportConfig())


def flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)


# ---------------------------------------------------------------------------------------------
# Pure: shapes and command lines


def test_walkthrough_command_hidden_states_static():
    cfg, shapes = shapes_for(HS_INPUTS, soc_version="Ascend310", log="info", precision_mode=None)
    assert shapes.mode == "static"  # auto: a graph without a cache compiles static
    argv = build_atc_command(cfg, "/m/qwen.onnx", shapes, "/out/qwen")
    assert argv == ["atc", "--framework=5", "--model=/m/qwen.onnx", "--output=/out/qwen", "--soc_version=Ascend310",
                    "--input_format=ND", "--input_shape=input_ids:1,16;attention_mask:1,16", "--log=info"]


def test_kv_cache_defaults_gear_the_sequence_with_batch_and_capacity_static():
    cfg, shapes = shapes_for(KV_INPUTS)
    assert shapes.mode == "dynamic_dims" and shapes.input_shape == KV_DEFAULT_SHAPE
    assert shapes.dims_gears == AUTO_GEARS and shapes.batch_gears is None
    argv = build_atc_command(cfg, "/m/kv.onnx", shapes, "/out/kv")
    assert argv == ["atc", "--framework=5", "--model=/m/kv.onnx", "--output=/out/kv", "--soc_version=Ascend910B3",
                    "--input_format=ND", f"--input_shape={KV_DEFAULT_SHAPE}", "--dynamic_dims=1,1;16,16;128,128",
                    "--precision_mode=must_keep_origin_dtype", "--log=error"]


def test_kv_cache_sizes_follow_batch_capacity_and_prefill_chunks():
    _, shapes = shapes_for(KV_INPUTS, BenchmarkConfig(batch_size=4, seq_len=8),
                           ExportConfig(kv_capacity=256, prefill_chunks=[64, 32]))
    assert shapes.input_shape == ("input_ids:4,-1;position_ids:4,-1;past_length:1;pad_lengths:4;"
                                  "past_key_values:256,4,4,2,4")
    assert shapes.dims_gears == [[1, 1], [32, 32], [64, 64]]  # sorted, the decode step's 1 first
    # A chunk of 1 is the decode gear itself: one gear is not enough for ATC, and the key to change is named.
    with pytest.raises(ConfigError, match="2 to 100 dynamic_dims gears") as info:
        shapes_for(KV_INPUTS, export=ExportConfig(prefill_chunks=[1]))
    assert info.value.key == "export.prefill_chunks"


@pytest.mark.parametrize("fields", [{"dynamic_mode": "static"}, {"dynamic_mode": "dynamic_batch_size"}])
def test_kv_cache_needs_sequence_gears(fields):
    with pytest.raises(ConfigError, match="use atc.dynamic_mode=auto") as info:
        shapes_for(KV_INPUTS, **fields)
    assert info.value.key == "atc.dynamic_mode"


def test_effective_mode_and_dim_roles():
    assert effective_mode(KV_INPUTS, AtcConfig()) == "dynamic_dims"
    assert effective_mode(HS_INPUTS, AtcConfig()) == "static"
    assert effective_mode(KV_INPUTS, AtcConfig(dynamic_mode="static")) == "static"
    assert [dim_role(d) for d in ("batch", "Batch_Size", "seq_len", "sequence", "kv_capacity", "s77", None, "")] \
        == ["batch", "batch", "seq", "seq", "capacity", None, None, None]


def test_dynamic_batch_size_defaults_to_benchmark_batch_sizes():
    cfg, shapes = shapes_for(HS_INPUTS, BenchmarkConfig(batch_sizes=[1, 2, 8]), dynamic_mode="dynamic_batch_size")
    assert shapes.input_shape == "input_ids:-1,16;attention_mask:-1,16"
    f = flags(build_atc_command(cfg, "m.onnx", shapes, "o"))
    assert f["dynamic_batch_size"] == "1,2,8" and "dynamic_dims" not in f
    cfg, shapes = shapes_for(HS_INPUTS, dynamic_mode="dynamic_batch_size", dynamic_batch_sizes=[2, 16])
    assert flags(build_atc_command(cfg, "m.onnx", shapes, "o"))["dynamic_batch_size"] == "2,16"


def test_dynamic_batch_size_needs_more_than_one_distinct_gear():
    with pytest.raises(ConfigError, match="benchmark.batch_sizes.*2 to 100"):
        shapes_for(HS_INPUTS, BenchmarkConfig(batch_sizes=[4]), dynamic_mode="dynamic_batch_size")
    with pytest.raises(ConfigError, match="must be distinct"):
        shapes_for(HS_INPUTS, BenchmarkConfig(batch_sizes=[4, 4]), dynamic_mode="dynamic_batch_size")
    with pytest.raises(ConfigError, match="atc.dynamic_batch_sizes"):
        AtcConfig(dynamic_mode="dynamic_batch_size", dynamic_batch_sizes=list(range(1, 102)))


def test_dynamic_dims_gears_per_dim_name_and_per_minus_one():
    cfg, shapes = shapes_for(HS_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,16", "4,32"])
    f = flags(build_atc_command(cfg, "m.onnx", shapes, "o"))
    assert f["input_shape"] == "input_ids:-1,-1;attention_mask:-1,-1"
    assert f["dynamic_dims"] == "1,16,1,16;4,32,4,32" and "dynamic_batch_size" not in f
    # ATC's own form: one value per -1, passed as given.
    _, shapes = shapes_for(HS_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,16,1,16", "2,8,2,8"])
    assert shapes.dims_gears == [[1, 16, 1, 16], [2, 8, 2, 8]]
    # kv_cache with the seq dim named explicitly: the same gears auto derives; capacity stays static.
    _, shapes = shapes_for(KV_INPUTS, dynamic_mode="dynamic_dims", dynamic_dim_names=["seq"], dynamic_dims=["1", "16"])
    assert shapes.input_shape == KV_DEFAULT_SHAPE and shapes.dims_gears == [[1, 1], [16, 16]]


def test_dynamic_dims_wrong_arity_names_the_expected_order():
    with pytest.raises(ConfigError, match=r"needs 2 values .* or 4 \(one per -1: input_ids\[0\]\(batch\)"):
        shapes_for(HS_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,2,3", "4,5,6"])
    with pytest.raises(ConfigError, match="gears must be distinct"):
        shapes_for(HS_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,16", "1,16,1,16"])


def test_dynamic_dims_over_batch_of_the_kv_cache_exceeds_four_per_gear():
    # batch and seq: input_ids ×2, position_ids ×2, pad_lengths, past_key_values → six -1s per gear.
    with pytest.raises(ConfigError, match="6 dims would be -1 in every gear; .* at most 4") as info:
        shapes_for(KV_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,1", "4,16"])
    assert info.value.key == "atc.dynamic_dim_names"


def test_shape_range_uses_ranges_and_no_gears():
    cfg, shapes = shapes_for(KV_INPUTS, BenchmarkConfig(batch_sizes=[1, 4]), ExportConfig(kv_capacity=256),
                             dynamic_mode="shape_range", soc_version="Ascend910B", max_seq_len=64)
    assert shapes.input_shape == ("input_ids:1~4,1~64;position_ids:1~4,1~64;past_length:1;pad_lengths:1~4;"
                                  "past_key_values:1~256,1~4,4,2,4")
    assert shapes.batch_gears is None and shapes.dims_gears is None
    argv = build_atc_command(cfg, "m.onnx", shapes, "o")
    assert not any(a.startswith(("--dynamic_batch_size", "--dynamic_dims", "--input_shape_range")) for a in argv)


@pytest.mark.parametrize("soc", ["Ascend310", "Ascend310B1", "Ascend310B4"])
def test_shape_range_rejected_on_310(soc):
    with pytest.raises(ConfigError, match=f"not supported on {soc}"):
        AtcConfig(dynamic_mode="shape_range", soc_version=soc)


def test_precision_implmode_and_extra_args_flags():
    cfg, shapes = shapes_for(HS_INPUTS, op_select_implmode="high_precision",
                             extra_args=["--optypelist_for_implmode=Pooling,SoftmaxV2", "--out_nodes", "Mul_4:0"])
    argv = build_atc_command(cfg, "m.onnx", shapes, "o")
    assert argv[-4:] == ["--log=error", "--optypelist_for_implmode=Pooling,SoftmaxV2", "--out_nodes", "Mul_4:0"]
    f = flags(argv)
    assert f["precision_mode"] == "must_keep_origin_dtype" and f["op_select_implmode"] == "high_precision"
    assert "precision_mode_v2" not in f
    cfg, shapes = shapes_for(HS_INPUTS, precision_mode=None, precision_mode_v2="mixed_float16")
    f = flags(build_atc_command(cfg, "m.onnx", shapes, "o"))
    assert f["precision_mode_v2"] == "mixed_float16" and "precision_mode" not in f and "op_select_implmode" not in f


def test_atc_defaults_are_the_ones_made_for_llms():
    cfg = AtcConfig()
    assert (cfg.dynamic_mode, cfg.precision_mode, cfg.export_dtype, cfg.skip_op_check) == \
        ("auto", "must_keep_origin_dtype", "float16", False)
    assert not hasattr(cfg, "past_seq_len")


@pytest.mark.parametrize("fields,key,text", [
    ({"precision_mode": "force_fp16", "precision_mode_v2": "fp16"}, "atc.precision_mode_v2", "cannot be combined"),
    ({"precision_mode_v2": "fp16"}, "atc.precision_mode_v2", "set atc.precision_mode=null"),
    ({"dynamic_mode": "dynamic_dims"}, "atc.dynamic_dims", "needs gears"),
    ({"dynamic_mode": "dynamic_dims", "dynamic_dims": ["1,16"]}, "atc.dynamic_dims", "2 to 100"),
    ({"dynamic_mode": "dynamic_dims", "dynamic_dims": ["1,16", "2,16"], "input_format": "NCHW"},
     "atc.input_format", "ND"),
    ({"dynamic_batch_sizes": [1, 4]}, "atc.dynamic_batch_sizes", "only applies to atc.dynamic_mode=dynamic_batch_size"),
    ({"dynamic_mode": "dynamic_batch_size", "dynamic_dims": ["1,16", "2,16"]}, "atc.dynamic_dims", "only applies"),
    ({"extra_args": ["--dynamic_batch_size=1,2"]}, "atc.extra_args", "use atc.\\* keys"),
    ({"extra_args": ["-soc-version=Ascend310"]}, "atc.extra_args", "sets --soc_version"),
    ({"extra_args": ["Pooling"]}, "atc.extra_args", "not a flag"),
    ({"input_shape": "input_ids 1,16"}, "atc.input_shape", "name:d,d"),
    ({"export_dtype": "bfloat16"}, "atc.export_dtype", "float16, float32"),
    ({"dynamic_mode": "dynamic"}, "atc.dynamic_mode", "auto"),
])
def test_invalid_combinations(fields, key, text):
    with pytest.raises(ConfigError, match=text) as info:
        AtcConfig(**fields)
    assert info.value.key == key


# soc_version: every chip torch_npu knows, a warning for scheme-fitting unknowns, a refusal otherwise.


@pytest.mark.parametrize("soc", ["Ascend310B4", "Ascend310P2", "Ascend310P4", "Ascend910_9392", "Ascend910B3",
                                 "Ascend310B1", "Ascend910_9391"])
def test_known_soc_versions_are_accepted_without_warning(soc):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AtcConfig(soc_version=soc).soc_version == soc
    assert soc in SOC_VERSIONS


@pytest.mark.parametrize("soc", ["Ascend910B9", "Ascend910_9399", "Ascend310P9"])
def test_unknown_soc_fitting_the_naming_scheme_is_accepted_with_a_warning(soc):
    assert soc not in SOC_VERSIONS
    with pytest.warns(UserWarning, match=f"atc.soc_version={soc} is not among the chips .* naming scheme"):
        assert AtcConfig(soc_version=soc).soc_version == soc


@pytest.mark.parametrize("soc,suggestion", [("910B3", "Ascend910B3"), ("310B4", "Ascend310B4"),
                                            ("Ascend910X", None), ("Ascend999", None), ("ascend910b3", None)])
def test_soc_version_outside_the_scheme_is_refused(soc, suggestion):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused, not warned about
        with pytest.raises(ConfigError) as info:
            AtcConfig(soc_version=soc)
    assert info.value.key == "atc.soc_version"
    message = str(info.value)
    if suggestion:
        assert f"did you mean {suggestion}" in message
    assert "(910B3 → Ascend910B3)" in message and all(name in message for name in SOC_VERSIONS)


def test_explicit_input_shape_is_checked_against_the_graph():
    _, shapes = shapes_for(HS_INPUTS, input_shape="input_ids:1,16;attention_mask:1,16")
    assert shapes.input_shape == "input_ids:1,16;attention_mask:1,16" and shapes.mode == "static"
    with pytest.raises(ConfigError, match="'input_idz' is not a graph input; inputs are input_ids, attention_mask"):
        shapes_for(HS_INPUTS, input_shape="input_idz:1,16;attention_mask:1,16")
    with pytest.raises(ConfigError, match="input_ids has 2 dims in the graph, not 3"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,16,1;attention_mask:1,16")
    with pytest.raises(ConfigError, match="'attention_mask' has dynamic dims and needs a shape"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,16")
    with pytest.raises(ConfigError, match="need a dynamic atc.dynamic_mode"):
        shapes_for(HS_INPUTS, input_shape="input_ids:-1,16;attention_mask:-1,16")
    with pytest.raises(ConfigError, match="only in the batch dim"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,-1;attention_mask:1,-1", dynamic_mode="dynamic_batch_size")
    _, shapes = shapes_for(HS_INPUTS, input_shape="input_ids:-1,16;attention_mask:-1,16",
                           dynamic_mode="dynamic_batch_size", dynamic_batch_sizes=[1, 8])
    assert shapes.batch_gears == [1, 8]
    _, shapes = shapes_for(HS_INPUTS, input_shape="input_ids:1,-1;attention_mask:1,-1", dynamic_mode="dynamic_dims",
                           dynamic_dims=["8,8", "16,16"])
    assert shapes.dims_gears == [[8, 8], [16, 16]]
    with pytest.raises(ConfigError, match="each gear needs 2 values"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,-1;attention_mask:1,-1", dynamic_mode="dynamic_dims",
                   dynamic_dims=["8", "16"])
    with pytest.raises(ConfigError, match="shape_range needs lo~hi ranges"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,16;attention_mask:1,16", dynamic_mode="shape_range",
                   soc_version="Ascend910B")


def test_explicit_input_shape_for_the_kv_cache_graph():
    shape = "input_ids:1,-1;position_ids:1,-1;past_length:1;pad_lengths:1;past_key_values:512,1,4,2,4"
    _, shapes = shapes_for(KV_INPUTS, input_shape=shape, dynamic_mode="dynamic_dims", dynamic_dims=["1,1", "32,32"])
    assert shapes.input_shape == shape and shapes.dims_gears == [[1, 1], [32, 32]]
    # Under auto the cache graph is a gear graph: an explicit shape without -1 is refused before ATC.
    with pytest.raises(ConfigError, match="needs -1 in the dynamic dims"):
        shapes_for(KV_INPUTS, input_shape=shape.replace("-1", "16"))
    # Fully static on request.
    _, shapes = shapes_for(KV_INPUTS, input_shape=shape.replace("-1", "1"), dynamic_mode="static")
    assert shapes.dims_gears is None and shapes.dims["past_key_values"] == ["512", "1", "4", "2", "4"]


def test_unknown_symbolic_dim_suggests_an_explicit_shape():
    with pytest.raises(ConfigError, match=r"dim 1 \('s77'\).*atc.input_shape='x:N,N,3'"):
        shapes_for([GraphInput("x", ("batch", "s77", 3))])


def test_graph_inputs_read_from_onnx(tmp_path):
    assert read_graph_inputs(kv_cache_onnx(tmp_path / "kv.onnx")) == KV_INPUTS
    assert read_graph_inputs(hidden_states_onnx(tmp_path / "hs.onnx")) == HS_INPUTS
    # Dims the exporter left unnamed or named without a role take their names from its dynamic_axes
    # (keys may be JSON strings).
    axes = {"input_ids": {"0": "batch", "1": "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    assert read_graph_inputs(hidden_states_onnx(tmp_path / "u.onnx", dims=(None, None)), axes) == HS_INPUTS
    assert read_graph_inputs(hidden_states_onnx(tmp_path / "s.onnx", dims=("s0", "s1")), axes) == HS_INPUTS
    assert read_graph_inputs(hidden_states_onnx(tmp_path / "n.onnx", dims=("s0", "s1")))[0].dims == ("s0", "s1")


def test_cache_key_ignores_paths_and_log_level_only():
    base = ["atc", "--framework=5", "--model=/a.onnx", "--output=/x/m", "--soc_version=Ascend910B", "--log=error"]
    key = cache_key("abc", base, "8.0.RC3")
    assert key == cache_key("abc", [*base[:2], "--model=/b.onnx", "--output=/y/m", base[4], "--log=debug"], "8.0.RC3")
    assert key != cache_key("abd", base, "8.0.RC3")
    assert key != cache_key("abc", [*base[:4], "--soc_version=Ascend310", base[5]], "8.0.RC3")
    assert key != cache_key("abc", [*base, "--dynamic_dims=1,1;16,16"], "8.0.RC3")
    assert key != cache_key("abc", base, "8.1.RC1")


def test_plan_names_the_cache_entry_after_the_key(tmp_path):
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    plan = plan_compile(AppConfig(), tmp_path / "om", exported)
    assert plan.folder == tmp_path / "om" / f"tiny_qwen_kv_cache_Ascend910B3_{plan.key[:16]}"
    assert plan.argv[3] == f"--output={plan.folder / 'tiny_qwen_kv_cache'}"
    assert flags(plan.argv)["input_shape"] == KV_DEFAULT_SHAPE
    other = plan_compile(AppConfig(export=ExportConfig(kv_capacity=512)), tmp_path / "om", exported)
    assert other.key != plan.key and other.onnx_sha256 == plan.onnx_sha256  # same ONNX, another .om


def test_find_om_takes_either_name_form(tmp_path):
    prefix = tmp_path / "m[1]"  # glob metacharacters in the name are taken literally
    assert find_om(prefix) is None
    (tmp_path / "m[1]_linux_aarch64.om").write_bytes(b"x")
    (tmp_path / "m1.om").write_bytes(b"x")
    assert find_om(prefix) == tmp_path / "m[1]_linux_aarch64.om"
    (tmp_path / "m[1].om").write_bytes(b"x")
    assert find_om(prefix) == tmp_path / "m[1].om"  # the exact name wins


# ---------------------------------------------------------------------------------------------
# The stand-in atc accepts exactly what the builder produces, and rejects what ATC rejects


def run_fake(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(FAKE_BIN / "atc"), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("graph,fields,dynamic", [
    ("hs", {"soc_version": "Ascend310"}, None),
    ("hs", {"dynamic_mode": "dynamic_batch_size"}, {"kind": "batch", "gears": [1, 4, 8]}),
    ("hs", {"dynamic_mode": "dynamic_dims", "dynamic_dims": ["1,16", "2,32"]},
     {"kind": "dims", "gears": [[1, 16, 1, 16], [2, 32, 2, 32]]}),
    ("kv", {}, {"kind": "dims", "gears": AUTO_GEARS}),
    ("kv", {"soc_version": "Ascend310B4"}, {"kind": "dims", "gears": AUTO_GEARS}),
    ("kv", {"dynamic_mode": "dynamic_dims", "dynamic_dim_names": ["seq"], "dynamic_dims": ["1", "16"]},
     {"kind": "dims", "gears": [[1, 1], [16, 16]]}),
    ("kv", {"dynamic_mode": "shape_range", "soc_version": "Ascend910B", "precision_mode": None,
            "precision_mode_v2": "origin"}, None),
])
def test_fake_atc_accepts_built_commands(tmp_path, graph, fields, dynamic):
    onnx_path = hidden_states_onnx(tmp_path / "m.onnx") if graph == "hs" else kv_cache_onnx(tmp_path / "m.onnx")
    cfg = AtcConfig(**fields)
    shapes = derive_input_shapes(read_graph_inputs(onnx_path), cfg, BenchmarkConfig(), ExportConfig())
    argv = build_atc_command(cfg, onnx_path, shapes, tmp_path / "out")
    result = run_fake(*argv[1:])
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0] == "ATC start working now, please wait for a moment."
    assert SUCCESS_LINE in result.stdout
    om = find_om(tmp_path / "out")
    assert om == tmp_path / "out_linux_x86_64.om"
    header, onnx_bytes = read_om(om)
    assert onnx_bytes == onnx_path.read_bytes()
    assert header["soc_version"] == cfg.soc_version and header["input_format"] == "ND"
    assert header["precision_mode"] == cfg.precision_mode and header["dynamic"] == dynamic
    assert [i["name"] for i in header["inputs"]] == list(shapes.dims)
    for item in header["inputs"]:
        expected = [-1 if t == "-1" or "~" in t else int(t) for t in shapes.dims[item["name"]]]
        assert item["dims"] == expected
    assert header["inputs"][0]["dtype"] == "int64"
    if graph == "hs" and dynamic is None:
        assert header["outputs"] == [{"name": "hidden_states", "dtype": "float32", "dims": [1, 16, 8]}]
    if graph == "kv" and fields == {}:
        assert header["inputs"][-1] == {"name": "past_key_values", "dims": [1024, 1, 4, 2, 4], "dtype": "float16"}


@pytest.mark.parametrize("args,code,text", [
    (["--framework=3"], "E10001", "--framework"),
    (["--soc_version=Ascend999"], "E10001", "--soc_version"),
    (["--input_shape=input_ids:1,16,2;attention_mask:1,16"], "E10001", "3 dims for [input_ids]"),
    (["--input_shape=ids:1,16;attention_mask:1,16"], "E10001", "Input [ids]"),
    (["--input_shape=input_ids:-1,16;attention_mask:-1,16"], "E10001", "-1 in --input_shape needs"),
    (["--input_shape=input_ids:-1,16;attention_mask:-1,16", "--dynamic_batch_size=1,2",
      "--dynamic_dims=1;2"], "E10001", "cannot be used together"),
    (["--input_shape=input_ids:1,-1;attention_mask:1,-1", "--input_format=ND", "--dynamic_dims=8;16"],
     "E10001", "has 1 values; --input_shape has 2"),
    (["--input_shape=input_ids:1,-1;attention_mask:1,-1", "--dynamic_batch_size=1,2"], "E10001", "batch dim"),
    (["--precision_mode=force_fp16", "--precision_mode_v2=fp16"], "E10001", "cannot be used together"),
    (["--precision_mode=fastest"], "E10001", "--precision_mode"),
    (["--input_format=NHWC"], "E10001", "--input_format"),
    (["--log=verbose"], "E10001", "--log"),
    (["--soc_version=Ascend310B1", "--input_shape=input_ids:1~4,16;attention_mask:1~4,16"], "E10001", "not supported"),
    (["--input_shape=input_ids:0,16;attention_mask:0,16"], "E10001", "Static dim 0"),
    (["--bogus=1"], "E10003", "Unknown parameter"),
])
def test_fake_atc_rejects_what_atc_rejects(tmp_path, args, code, text):
    onnx_path = hidden_states_onnx(tmp_path / "m.onnx")
    base = {"framework": "5", "model": str(onnx_path), "output": str(tmp_path / "o"), "soc_version": "Ascend910B",
            "input_shape": "input_ids:1,16;attention_mask:1,16"}
    for arg in args:
        base[arg[2:].split("=", 1)[0]] = arg.split("=", 1)[1]
    result = run_fake(*(f"--{k}={v}" for k, v in base.items()))
    assert result.returncode == 1
    assert "ATC run failed, Please check the detail log" in result.stdout
    assert f"{code}:" in result.stdout and text in result.stdout
    assert not list(tmp_path.glob("o*.om"))


def test_fake_atc_flag_forms(tmp_path):
    onnx_path = hidden_states_onnx(tmp_path / "m.onnx")
    result = run_fake("-framework", "5", "--model", str(onnx_path), f"--output={tmp_path / 'o'}",
                      "--soc-version=Ascend910B2", "--input_shape", "input_ids:1,4;attention_mask:1,4")
    assert result.returncode == 0, result.stdout
    assert read_om(tmp_path / "o_linux_x86_64.om")[0]["soc_version"] == "Ascend910B2"
    missing = run_fake("--framework=5", f"--model={tmp_path / 'nope.onnx'}", f"--output={tmp_path / 'o'}",
                       "--soc_version=Ascend910B")
    assert missing.returncode == 1 and "E19000" in missing.stdout


def test_fake_atc_delay_hook_delays_and_is_counted(tmp_path):
    calls = tmp_path / "calls.txt"
    onnx_path = hidden_states_onnx(tmp_path / "m.onnx")
    start = time.monotonic()
    result = run_fake("--framework=5", f"--model={onnx_path}", f"--output={tmp_path / 'o'}",
                      "--soc_version=Ascend910B", "--input_shape=input_ids:1,4;attention_mask:1,4",
                      env={"FAKE_ATC_DELAY_S": "1.5", "FAKE_ATC_CALLS": str(calls)})
    assert result.returncode == 0 and SUCCESS_LINE in result.stdout, result.stdout
    assert time.monotonic() - start >= 1.5
    assert len(calls.read_text().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The op check (pure): domain, op type and input dtypes against ATC's ONNX operator pages


def test_op_check_refuses_int64_cumsum_naming_node_op_and_dtype(tmp_path):
    result = opcheck.check_graph(cumsum_onnx(tmp_path / "c.onnx"), "must_keep_origin_dtype")
    assert not result.ok
    [offender] = result.offenders
    assert (offender.node, offender.op, offender.problem, offender.dtype, offender.input_index) == \
        ("/model/CumSum", "CumSum", "dtype", "int64", 0)
    assert "int64" not in offender.allowed and "int32" in offender.allowed
    assert "/model/CumSum (CumSum): input 0 (x) is int64; ATC takes" in result.summary()
    # int64 is refused in every precision mode: only float32 inputs are cast.
    assert not opcheck.check_graph(tmp_path / "c.onnx", "force_fp16").ok


def test_op_check_refuses_foreign_domains_and_unknown_ops(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    result = opcheck.check_graph(matmul_nbits_onnx(tmp_path / "q.onnx"), "force_fp16")
    assert [(o.node, o.op, o.domain, o.problem) for o in result.offenders] == \
        [("/model/layers.0/mlp/MatMul_Q8", "MatMulNBits", "com.microsoft", "domain")]
    assert "(com.microsoft::MatMulNBits): domain 'com.microsoft' has no ATC parser" in result.summary()
    path = _write_onnx(tmp_path / "h.onnx", [helper.make_tensor_value_info("x", T.FLOAT16, [1, 4])],
                       [helper.make_tensor_value_info("y", T.FLOAT16, [1, 4])],
                       [helper.make_node("HardSwish", ["x"], ["y"])])
    assert [(o.node, o.problem) for o in opcheck.check_graph(path).offenders] == [("HardSwish_0", "op")]


def test_op_check_is_precision_aware_and_skips_constant_folded_nodes(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    def graph(dtype, name):
        np_dtype = np.float16 if dtype == T.FLOAT16 else np.float32
        # The int64 CumSum over a constant is folded before kernel selection: no kernel needed.
        nodes = [helper.make_node("CumSum", ["steps", "axis"], ["folded"]),
                 helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")]
        return _write_onnx(tmp_path / name, [helper.make_tensor_value_info("x", dtype, [1, 4])],
                           [helper.make_tensor_value_info("y", dtype, [1, 4]),
                            helper.make_tensor_value_info("folded", T.INT64, [3])], nodes,
                           [_const("w", np.eye(4, dtype=np_dtype)), _const("steps", np.arange(3, dtype=np.int64)),
                            _const("axis", np.array(0, np.int64))])

    f32, f16 = graph(T.FLOAT, "f32.onnx"), graph(T.FLOAT16, "f16.onnx")
    keep = opcheck.check_graph(f32, "must_keep_origin_dtype")
    assert [(o.node, o.dtype) for o in keep.offenders] == [("/proj/MatMul", "float"), ("/proj/MatMul", "float")]
    assert opcheck.check_graph(f32, None, "origin").offenders  # the v2 spelling of keeping dtypes
    for precision in (("force_fp16", None), (None, None), (None, "mixed_float16")):
        assert opcheck.check_graph(f32, *precision).ok, precision
    assert opcheck.check_graph(f16, "must_keep_origin_dtype").ok
    rows = {row["op"]: row for row in keep.histogram_rows()}
    assert rows["MatMul"]["nodes"] == 1 and rows["MatMul"]["input_dtypes"] == "float"
    assert rows["MatMul"]["refused_nodes"] > 0 and rows["MatMul"]["in_atc_table"]
    assert rows["CumSum"]["refused_nodes"] == 0 and rows["MatMul"]["page"].startswith("https://www.hiascend.com/")


def test_a_node_with_two_refused_inputs_counts_once(tmp_path, job, calls):
    """One float32 MatMul (both inputs refused under must_keep_origin_dtype) is one offending node."""
    from onnx import TensorProto as T
    from onnx import helper

    path = _write_onnx(tmp_path / "m.onnx", [helper.make_tensor_value_info("x", T.FLOAT, ["batch", 4])],
                       [helper.make_tensor_value_info("y", T.FLOAT, ["batch", 4])],
                       [helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")],
                       [_const("w", np.eye(4, dtype=np.float32))])
    exported = ToyExported(path, hashlib.sha256(path.read_bytes()).hexdigest(), "matmul")
    cfg, ctx, finish = job()
    with pytest.raises(OpCheckError) as info:
        ensure_compiled(cfg, ctx, exported)
    run = finish("FAILED")
    assert atc_runs(calls) == 0
    rows = histogram(download(run, ctx.tracker.client, HISTOGRAM, tmp_path))
    assert (rows["MatMul"]["nodes"], rows["MatMul"]["refused_nodes"]) == ("1", "1")
    assert run.data.metrics["atc_op_check_offenders"] == 1
    assert run.data.tags["atc_op_check"] == "failed: 1 offending nodes"
    assert "has 1 nodes ATC's ONNX parser does not take" in str(info.value)


def test_both_toy_contract_graphs_pass_the_op_check(tmp_path):
    assert opcheck.check_graph(kv_cache_onnx(tmp_path / "kv.onnx"), "must_keep_origin_dtype").ok
    assert opcheck.check_graph(hidden_states_onnx(tmp_path / "hs.onnx"), "must_keep_origin_dtype").ok


def rms_norm_onnx(path: Path, opset: int) -> Path:
    """RMSNorm's ReduceMean and an opset-13-form Unsqueeze (axes as an input), at ``opset``."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="/norm/Pow"),
             helper.make_node("ReduceMean", ["sq"], ["ms"], name="/norm/ReduceMean", axes=[-1], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["var"], name="/norm/Add"),
             helper.make_node("Unsqueeze", ["var", "axes"], ["y"], name="/norm/Unsqueeze")]
    return _write_onnx(path, [helper.make_tensor_value_info("x", T.FLOAT16, ["batch", 4])],
                       [helper.make_tensor_value_info("y", T.FLOAT16, [1, "batch", 1])], nodes,
                       [_const("eps", np.array([1e-6], np.float16)), _const("axes", np.array([0], np.int64))],
                       opsets=(("", opset),))


def test_op_check_reads_the_opsets_atc_parses_each_op_at(tmp_path):
    """ATC looks ops up as ai.onnx::<opset>::<op>: ReduceMean's page lists v8-v16 (atlasoxol_09_0123), so an
    opset-17 RMSNorm is refused naming node, op and opset; Unsqueeze's opset-13 form (page v8-v12, plugin
    13-18: the row's parser_opsets) passes at 14 and 17."""
    ok = opcheck.check_graph(rms_norm_onnx(tmp_path / "14.onnx", 14), "must_keep_origin_dtype")
    assert ok.ok and ok.opset == 14
    refused = opcheck.check_graph(rms_norm_onnx(tmp_path / "17.onnx", 17), "must_keep_origin_dtype")
    [offender] = refused.offenders
    assert (offender.node, offender.op, offender.problem, offender.opset) == ("/norm/ReduceMean", "ReduceMean",
                                                                            "opset", 17)
    assert ("/norm/ReduceMean (ReduceMean) at opset 17: ATC parses ReduceMean at opsets v8-v16 only "
            "(https://www.hiascend.com/") in refused.summary()
    assert refused.fitting_opset() == 16
    rows = {row["op"]: row for row in refused.histogram_rows()}
    assert rows["ReduceMean"]["documented_opsets"] == "v8-v16" and rows["ReduceMean"]["graph_opset"] == 17
    assert rows["Unsqueeze"]["parser_opsets"] == "v8-v18" and rows["Unsqueeze"]["refused_nodes"] == 0


def test_the_default_opset_is_one_every_op_of_the_kv_cache_graph_is_parsed_at():
    table = opcheck.ops_table()
    opset = ExportConfig().opset
    for op in ("ReduceMean", "Sub", "Unsqueeze", "Softmax", "MatMul", "Where", "GreaterOrEqual", "ArgMax"):
        low, high = opcheck.accepted_opsets(table[op])
        assert low <= opset <= high, op
    assert opcheck.accepted_opsets(table["Constant"]) is None  # mapped before the versioned lookup


def test_opset_refusal_stops_before_atc_and_names_the_fix(tmp_path, job, calls):
    path = rms_norm_onnx(tmp_path / "n.onnx", 17)
    exported = ToyExported(path, hashlib.sha256(path.read_bytes()).hexdigest(), "norm")
    cfg, ctx, finish = job()
    with pytest.raises(OpCheckError) as info:
        ensure_compiled(cfg, ctx, exported, required=True)
    finish("FAILED")
    assert atc_runs(calls) == 0
    assert "/norm/ReduceMean (ReduceMean) at opset 17" in str(info.value) and "export.opset=16" in str(info.value)
    # The stand-in atc has its own registry (tests/fakes/atc_opcheck.py): the same graph is refused there too.
    cfg, ctx, finish = job("atc.skip_op_check=true")
    with pytest.raises(AtcError, match="error codes: E19010") as info:
        ensure_compiled(cfg, ctx, exported, required=True)
    finish("FAILED")
    assert "No parser is registered for Op [/norm/ReduceMean, optype [ai.onnx::17::ReduceMean]]" in str(info.value)


# ---------------------------------------------------------------------------------------------
# The subprocess path, the op check, the cache and the MLflow record (in-process, real store)


@dataclass
class ToyExported:
    """The fields of ascend_lab.export.ExportedModel that compiling reads."""

    onnx_path: Path
    sha256: str
    graph: str
    dynamic_axes: dict = field(default_factory=dict)


TOYS = {"hidden_states": hidden_states_onnx, "kv_cache": kv_cache_onnx, "cumsum": cumsum_onnx,
        "nbits": matmul_nbits_onnx}


def toy_exported(path: Path, graph: str = "hidden_states") -> ToyExported:
    onnx_path = TOYS[graph](path)
    return ToyExported(onnx_path, hashlib.sha256(onnx_path.read_bytes()).hexdigest(), graph)


class RecordingTracker(Tracker):
    def __init__(self):
        self.metrics, self.tags, self.texts, self.artifacts = {}, {}, {}, []

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_text(self, text, artifact_file):
        self.texts[artifact_file] = text

    def log_artifact(self, local_path, artifact_path=None):
        self.artifacts.append((Path(local_path), artifact_path))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real MLflow store for the in-process tests (creating its tables takes seconds)."""
    from ascend_lab.config.tracking import TrackingConfig
    from ascend_lab.tracking import prepare_store

    return prepare_store(TrackingConfig(), tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def job(tmp_path, compose, monkeypatch, store):
    """``job(*overrides)`` → (cfg, ctx, finish) with a real MLflow run, launched from tmp_path, the
    stand-in atc on PATH; ``finish(status)`` ends the run and returns it as stored."""
    from ascend_lab.context import JobContext
    from ascend_lab.tracking import open_run

    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    for name in ("FAKE_ATC_MODE", "FAKE_ATC_CALLS", "FAKE_ATC_OM_NAME", "FAKE_ATC_DELAY_S", "FAKE_ATC_PIDFILE",
                 "TE_PARALLEL_COMPILER", "ASCEND_PROCESS_LOG_PATH", "ASCEND_WORK_PATH"):
        monkeypatch.delenv(name, raising=False)
    opened = []

    def _job(*overrides: str):
        cfg = validate(compose("task=compile", *overrides))
        tracker = open_run(store, f"compile-{len(opened)}", {"task": "compile"})
        output_dir = tmp_path / f"job{len(opened)}"
        output_dir.mkdir()
        opened.append(tracker)

        def finish(status: str = "FINISHED"):
            tracker.end(status)
            return tracker.client.get_run(tracker.run_id)

        return cfg, JobContext(cfg, tracker, tmp_path, output_dir), finish

    return _job


@pytest.fixture
def calls(tmp_path, monkeypatch) -> Path:
    """The stand-in's invocation log (one line per `atc` run); absent until atc runs."""
    path = tmp_path / "atc_calls.txt"
    monkeypatch.setenv("FAKE_ATC_CALLS", str(path))
    return path


def atc_runs(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def artifacts(run, client) -> set[str]:
    return {a.path for a in client.list_artifacts(run.info.run_id)}


def download(run, client, name: str, tmp_path: Path) -> str:
    folder = tmp_path / f"dl-{run.info.run_id}"
    folder.mkdir(exist_ok=True)
    return Path(client.download_artifacts(run.info.run_id, name, str(folder))).read_text()


def histogram(text: str) -> dict[str, dict]:
    return {row["op"]: row for row in csv.DictReader(io.StringIO(text))}


def test_compile_success_is_recorded_and_cached(tmp_path, job, calls):
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job("atc.soc_version=Ascend310", "atc.log=info")
    compiled = ensure_compiled(cfg, ctx, exported)
    run = finish()

    assert isinstance(compiled, CompiledModel) and not compiled.cache_hit
    assert compiled.om_path.is_file() and compiled.om_path.name == "tiny_qwen_hidden_states_linux_x86_64.om"
    assert compiled.om_path.parent.parent == tmp_path / "outputs" / "om"
    assert compiled.sha256 == hashlib.sha256(compiled.om_path.read_bytes()).hexdigest()
    assert compiled.onnx_sha256 == exported.sha256
    assert compiled.soc_version == "Ascend310" and compiled.dynamic_mode == "static" and compiled.batch_gears is None
    header, onnx_bytes = read_om(compiled.om_path)
    assert onnx_bytes == exported.onnx_path.read_bytes() and header["soc_version"] == "Ascend310"
    meta = artifact_cache.read_meta(compiled.om_path.parent)
    assert meta["files"] == [compiled.om_path.name] and meta["sha256"] == compiled.sha256

    tags, metrics = run.data.tags, run.data.metrics
    assert tags["om_sha256"] == compiled.sha256 and tags["onnx_sha256"] == exported.sha256
    assert tags["om_path"] == str(compiled.om_path)
    assert tags["atc.input_shape"] == "input_ids:1,16;attention_mask:1,16"
    assert tags["atc_command"].startswith("atc --framework=5 --model=") and "--soc_version=Ascend310" in tags["atc_command"]
    assert metrics["compile_cache_hit"] == 0 and metrics["compile_seconds"] > 0
    assert metrics["atc_op_check_offenders"] == 0 and metrics["onnx_nodes"] == 5
    client = ctx.tracker.client
    assert {"atc.log", "atc_command.txt", "compile.json", HISTOGRAM} <= artifacts(run, client)
    assert SUCCESS_LINE in download(run, client, "atc.log", tmp_path)
    assert histogram(download(run, client, HISTOGRAM, tmp_path))["Mul"]["nodes"] == "2"
    assert atc_runs(calls) == 1

    # A second identical compile is a cache hit: atc does not run, the same .om comes back.
    cfg, ctx, finish = job("atc.soc_version=Ascend310", "atc.log=debug")
    again = ensure_compiled(cfg, ctx, exported)
    run2 = finish()
    assert again.cache_hit and again.om_path == compiled.om_path and again.sha256 == compiled.sha256
    assert run2.data.metrics["compile_cache_hit"] == 1 and run2.data.tags["om_sha256"] == compiled.sha256
    assert "atc.log" in artifacts(run2, client)  # the log of the compile that made the .om
    assert atc_runs(calls) == 1
    # A different setting compiles anew into its own folder.
    cfg, ctx, finish = job("atc.soc_version=Ascend910B")
    other = ensure_compiled(cfg, ctx, exported)
    finish()
    assert not other.cache_hit and other.om_path.parent != compiled.om_path.parent
    assert atc_runs(calls) == 2


@pytest.mark.parametrize("damage", ["truncated", "deleted", "meta unreadable"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, job, calls, damage):
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    cfg, ctx, finish = job()
    first = ensure_compiled(cfg, ctx, exported)
    finish()
    if damage == "truncated":
        first.om_path.write_bytes(first.om_path.read_bytes()[:100])
        later = time.time() + 5  # certainly after meta.json was written
        os.utime(first.om_path, (later, later))
    elif damage == "deleted":
        first.om_path.unlink()
    else:
        (first.om_path.parent / "meta.json").write_text("{not json")
    cfg, ctx, finish = job()
    again = ensure_compiled(cfg, ctx, exported)
    run = finish()
    assert atc_runs(calls) == 2 and not again.cache_hit
    assert run.data.metrics["compile_cache_hit"] == 0
    assert again.om_path == first.om_path and again.sha256 == first.sha256
    assert hashlib.sha256(again.om_path.read_bytes()).hexdigest() == first.sha256
    # and the rebuilt entry is intact: the next one is a hit
    cfg, ctx, finish = job()
    assert ensure_compiled(cfg, ctx, exported).cache_hit
    finish()
    assert atc_runs(calls) == 2


@pytest.mark.parametrize("form,name", [("plain", "tiny_qwen_kv_cache.om"),
                                       ("suffixed", "tiny_qwen_kv_cache_linux_x86_64.om"),
                                       (None, "tiny_qwen_kv_cache_linux_x86_64.om")])
def test_both_om_name_forms_are_found_and_recorded(tmp_path, job, monkeypatch, form, name):
    if form:
        monkeypatch.setenv("FAKE_ATC_OM_NAME", form)
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    cfg, ctx, finish = job()
    compiled = ensure_compiled(cfg, ctx, exported, required=True)
    run = finish()
    assert compiled.om_path.name == name and compiled.om_path.is_file()
    assert [p.name for p in compiled.om_path.parent.glob("*.om")] == [name]
    assert run.data.tags["om_path"] == str(compiled.om_path) and run.data.tags["om_sha256"] == compiled.sha256
    assert read_om(compiled.om_path)[0]["dynamic"] == {"kind": "dims", "gears": AUTO_GEARS}
    # The cache entry records the name it found: the next job is a hit on the same file.
    cfg, ctx, finish = job()
    again = ensure_compiled(cfg, ctx, exported)
    assert again.cache_hit and again.om_path == compiled.om_path
    assert finish().data.tags["om_path"] == str(compiled.om_path)


@pytest.mark.parametrize("mode,expected", [
    ("fail", r"ATC failed \(exit status 1\)\.[\s\S]*error codes: E19999[\s\S]*ATC run failed, Please check"),
    ("no_success_line", "never printed 'ATC run success"),
    ("no_output", r"no .*tiny_qwen_hidden_states\*\.om exists"),
])
def test_compile_failures_quote_the_log(tmp_path, job, monkeypatch, mode, expected):
    monkeypatch.setenv("FAKE_ATC_MODE", mode)
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job()
    with pytest.raises(AtcError, match=expected) as info:
        ensure_compiled(cfg, ctx, exported)
    run = finish("FAILED")
    assert "ATC start working now" in str(info.value)  # the tail of the log is quoted
    assert str(ctx.output_dir / "atc.log") in str(info.value)
    # ATC's own detailed log is in this job's work directory, and the message says where.
    plog = ctx.output_dir / "atc_work" / "ascend_log" / "debug" / "plog"
    assert f"ATC's detailed log (plog): {plog}" in str(info.value)
    if mode == "fail":
        assert "Injected failure" in next(plog.glob("plog-*.log")).read_text()
    assert "atc.log" in artifacts(run, ctx.tracker.client)
    # Nothing half-made is left to be mistaken for a cached result, and no staging folder stays behind.
    om_dir = tmp_path / "outputs" / "om"
    assert not list(om_dir.rglob("*.om")) and not list(om_dir.rglob("meta.json"))
    assert not [p for p in om_dir.iterdir() if p.name.startswith(".tmp-")]


def test_each_job_compiles_in_its_own_work_directory(tmp_path, job, monkeypatch):
    """fusion_result.json and kernel_meta/ land in each job's atc_work, not the launch directory; ATC logs there
    and gets a bounded TE_PARALLEL_COMPILER unless the user set one; the .om name carries the host's arch."""
    from ascend_lab.compile import workdir

    monkeypatch.setenv("FAKE_ATC_HOST_ARCH", "aarch64")  # a Kunpeng host
    first_cfg, first, finish_first = job()
    compiled = ensure_compiled(first_cfg, first, toy_exported(tmp_path / "a.onnx"), required=True)
    run = finish_first()
    assert compiled.om_path.name.endswith("_linux_aarch64.om")
    monkeypatch.setenv("TE_PARALLEL_COMPILER", "3")
    second_cfg, second, finish_second = job()
    ensure_compiled(second_cfg, second, toy_exported(tmp_path / "b.onnx", "kv_cache"), required=True)
    second_run = finish_second()
    stamps = [json.loads((c.output_dir / "atc_work" / "fusion_result.json").read_text())["stand_in"]
              for c in (first, second)]
    assert stamps[0]["pid"] != stamps[1]["pid"] and (first.output_dir / "atc_work" / "kernel_meta").is_dir()
    assert not (tmp_path / "fusion_result.json").exists() and not (tmp_path / "kernel_meta").exists()
    chosen = run.data.tags["atc.env.TE_PARALLEL_COMPILER"]
    assert stamps[0]["TE_PARALLEL_COMPILER"] == chosen and 1 <= int(chosen) <= 8
    assert stamps[1]["TE_PARALLEL_COMPILER"] == "3" and "atc.env.TE_PARALLEL_COMPILER" not in second_run.data.tags
    assert run.data.tags["atc.env.ASCEND_PROCESS_LOG_PATH"] == str(first.output_dir / "atc_work" / "ascend_log")
    # envref_07_0020: at most cores × 80 % / processors, 1-32, default 8; and one per 2 GB available.
    assert workdir.parallel_compilers(64, 100.0) == 8 and workdir.parallel_compilers(16, 100.0, 8) == 1
    assert workdir.parallel_compilers(64, 9.0) == 4 and workdir.parallel_compilers(2, None) == 1
    assert workdir.plog_dir({"ASCEND_WORK_PATH": "/w", "HOME": "/h"}) == Path("/w/log")
    assert workdir.plog_dir({"HOME": "/h"}) == Path("/h/ascend/log")


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_compile_timeout_kills_the_process_group(tmp_path, job, monkeypatch):
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_ATC_MODE", "hang")
    monkeypatch.setenv("FAKE_ATC_PIDFILE", str(pidfile))
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job("atc.timeout_s=3")
    start = time.monotonic()
    with pytest.raises(AtcError, match=r"ATC timed out after 3 s \(atc.timeout_s\) and was killed"):
        ensure_compiled(cfg, ctx, exported)
    finish("FAILED")
    assert time.monotonic() - start < 30
    assert "killed after 3 s (atc.timeout_s)" in (ctx.output_dir / "atc.log").read_text()
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_gone(child), "the atc child process survived the timeout"


def test_no_atc_is_explained_or_skipped(tmp_path, job, monkeypatch):
    if cann_toolkit.find_set_env() is not None:
        pytest.skip("a CANN toolkit is installed on this host")
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cann_toolkit.find_atc() is None
    with pytest.raises(ToolchainError) as info:
        ensure_compiled(cfg, ctx, exported, required=True)
    message = str(info.value)
    assert "CANN toolkit is not installed or its environment is not loaded" in message
    for location in cann_toolkit.set_env_locations():
        assert str(location) in message
    assert "/usr/local/Ascend/ascend-toolkit/set_env.sh" in message and "Ascend/cann/set_env.sh" in message
    assert "atc.toolkit_home" in message
    # Not required (the pipeline): None, with the reason recorded.
    assert ensure_compiled(cfg, ctx, exported) is None
    run = finish()
    assert "not installed" in run.data.tags["compile_skipped"]
    assert not (tmp_path / "outputs" / "om").exists() or not list((tmp_path / "outputs" / "om").iterdir())


def test_set_env_sh_provides_atc(tmp_path, job, monkeypatch):
    toolkit = tmp_path / "Ascend" / "ascend-toolkit"
    toolkit.mkdir(parents=True)
    (toolkit / "set_env.sh").write_text(f'echo "sourcing CANN"\nexport PATH="{FAKE_BIN}:$PATH"\n'
                                        f'export ASCEND_TOOLKIT_HOME="{toolkit}"\n')
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job(f"atc.toolkit_home={toolkit}")
    # Only the interpreter's folder (for the stand-in's `env python3`) and the system's: no atc.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert cann_toolkit.locate("atc").path is None
    located = cann_toolkit.locate("atc", str(toolkit))
    assert located.set_env == toolkit / "set_env.sh" and located.env is None  # locating runs nothing
    environment = cann_toolkit.load_environment("atc", str(toolkit))
    assert environment.set_env == toolkit / "set_env.sh" and environment.path == FAKE_BIN / "atc"
    assert environment.env["ASCEND_TOOLKIT_HOME"] == str(toolkit)
    assert "ASCEND_TOOLKIT_HOME" not in os.environ
    compiled = ensure_compiled(cfg, ctx, exported, required=True)
    run = finish()
    assert compiled.om_path.is_file()
    text = download(run, ctx.tracker.client, "atc_command.txt", tmp_path)
    assert f"set_env.sh: {toolkit / 'set_env.sh'} (sourced" in text and f"atc: {FAKE_BIN / 'atc'}" in text


def test_broken_set_env_sh_is_a_clear_error(tmp_path):
    broken = tmp_path / "set_env.sh"
    broken.write_text("echo 'half-installed CANN' >&2\nexit 3\n")
    with pytest.raises(ToolchainError, match=r"`source .*set_env.sh` failed \(exit status 3\)[\s\S]*half-installed"):
        cann_toolkit.capture_set_env(broken)


def test_dry_run_logs_command_and_environment(tmp_path, job, calls, capsys):
    exported = toy_exported(tmp_path / "kv.onnx", graph="kv_cache")
    cfg, ctx, finish = job("atc.dry_run=true", "atc.soc_version=Ascend910B", "atc.toolkit_home=" + str(tmp_path / "no"))
    assert ensure_compiled(cfg, ctx, exported, required=True) is None
    run = finish()
    out = capsys.readouterr().out
    command = run.data.tags["atc_command"]
    assert command in out and "set_env.sh: none found" in out
    assert f"'--input_shape={KV_DEFAULT_SHAPE}'" in command and "'--dynamic_dims=1,1;16,16;128,128'" in command
    assert run.data.tags["compile_skipped"].startswith("dry run")
    assert "om_sha256" not in run.data.tags and not (tmp_path / "outputs" / "om").exists()
    assert atc_runs(calls) == 0
    client = ctx.tracker.client
    assert download(run, client, "atc_command.txt", tmp_path).startswith(command)
    assert histogram(download(run, client, HISTOGRAM, tmp_path))["MatMul"]["refused_nodes"] == "0"


# The op check refuses before any atc call, logs the histogram, and atc.skip_op_check lets it through.


@pytest.mark.parametrize("graph,offender,code", [
    ("cumsum", "/model/CumSum (CumSum): input 0 (x) is int64; ATC takes float16, float, int32", "EZ3002"),
    ("nbits", "/model/layers.0/mlp/MatMul_Q8 (com.microsoft::MatMulNBits): domain 'com.microsoft' has no ATC "
              "parser (only ai.onnx)", "E19010"),
])
def test_op_check_refuses_before_any_atc_call(tmp_path, job, calls, graph, offender, code):
    exported = toy_exported(tmp_path / f"{graph}.onnx", graph)
    cfg, ctx, finish = job()
    with pytest.raises(OpCheckError) as info:
        ensure_compiled(cfg, ctx, exported, required=True)
    run = finish("FAILED")
    message = str(info.value)
    assert atc_runs(calls) == 0 and not calls.exists()
    assert offender in message and "atc was not run" in message
    assert "export.graph" in message and "AMCT" in message and "atc.skip_op_check=true" in message
    if graph == "nbits":
        assert "drop export.quantize" in message
    assert run.data.tags["atc_op_check"] == "failed: 1 offending nodes"
    assert run.data.metrics["atc_op_check_offenders"] == 1
    assert "om_sha256" not in run.data.tags and not (tmp_path / "outputs" / "om").exists()
    rows = histogram(download(run, ctx.tracker.client, HISTOGRAM, tmp_path))
    op = "CumSum" if graph == "cumsum" else "MatMulNBits"
    assert rows[op]["refused_nodes"] == "1" and rows[op]["nodes"] == "1"
    if graph == "cumsum":
        assert rows[op]["input_dtypes"] == "int64" and rows[op]["in_atc_table"] == "True"
    else:
        assert rows[op]["domain"] == "com.microsoft" and rows[op]["in_atc_table"] == "False"
        assert rows["Cast"]["refused_nodes"] == "0"
    # A dry run checks the graph too.
    cfg, ctx, finish = job("atc.dry_run=true")
    with pytest.raises(OpCheckError):
        ensure_compiled(cfg, ctx, exported)
    finish("FAILED")

    # atc.skip_op_check=true: atc runs, and the stand-in, like ATC, refuses with its own E-code.
    cfg, ctx, finish = job("atc.skip_op_check=true")
    with pytest.raises(AtcError, match=f"error codes: {code}") as info:
        ensure_compiled(cfg, ctx, exported, required=True)
    run = finish("FAILED")
    assert atc_runs(calls) == 1
    assert run.data.tags["atc_op_check"] == "skipped with 1 offending nodes"
    assert HISTOGRAM in artifacts(run, ctx.tracker.client)
    assert ("No parser is registered for Op [/model/layers.0/mlp/MatMul_Q8" if graph == "nbits"
            else "No supported Ops kernel and engine are found for [/model/CumSum]") in str(info.value)


def test_concurrent_same_key_compiles_in_threads_run_atc_once(tmp_path, monkeypatch, calls):
    """The second job asks while the first one's atc runs (the entry is not published yet): it waits on
    the key's lock and takes the first one's .om."""
    from ascend_lab.context import JobContext

    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ATC_DELAY_S", "3")
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    cfg = AppConfig()

    def compile_job(name: str):
        tracker, output_dir = RecordingTracker(), tmp_path / name
        output_dir.mkdir()
        return ensure_compiled(cfg, JobContext(cfg, tracker, tmp_path, output_dir), exported, required=True), tracker

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(compile_job, "a")
        deadline = time.monotonic() + 60
        while atc_runs(calls) == 0 and not first.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert atc_runs(calls) == 1, "the first compile never started atc"
        assert not list((tmp_path / "outputs" / "om").glob("*/meta.json")), "published before the second job asked"
        second = pool.submit(compile_job, "b")
        (a, a_tracker), (b, b_tracker) = first.result(timeout=120), second.result(timeout=120)
    assert atc_runs(calls) == 1
    assert (a.cache_hit, b.cache_hit) == (False, True)
    assert a.om_path == b.om_path and a.sha256 == b.sha256 == hashlib.sha256(a.om_path.read_bytes()).hexdigest()
    assert (a_tracker.metrics["compile_cache_hit"], b_tracker.metrics["compile_cache_hit"]) == (0, 1)
    # The second job did not find the entry up front: it checked the graph and went for the lock.
    assert "atc_op_check_offenders" in b_tracker.metrics
    assert b_tracker.tags["om_sha256"] == a_tracker.tags["om_sha256"]


# ---------------------------------------------------------------------------------------------
# The shipped kv_cache graph of tiny_qwen (real export) through the stand-in atc


def tiny_dims() -> tuple[int, int, int]:
    model = ModelConfig()
    return 2 * model.num_hidden_layers, model.num_key_value_heads, model.hidden_size // model.num_attention_heads


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """tiny_qwen's kv_cache graph exported in float16 (atc.export_dtype's default) and float32."""
    from ascend_lab.context import JobContext
    from ascend_lab.export import ensure_exported

    launch = tmp_path_factory.mktemp("tiny_exports")
    cfg = AppConfig()
    return {dtype: ensure_exported(cfg, JobContext(cfg, Tracker(), launch, launch), dtype=dtype)
            for dtype in ("float16", "float32")}


def test_shipped_kv_cache_graph_compiles_under_the_defaults(tmp_path, job, calls, tiny_exports):
    exported = tiny_exports["float16"]
    assert exported.graph == "kv_cache" and exported.dtype == "float16"
    cfg, ctx, finish = job()
    compiled = ensure_compiled(cfg, ctx, exported, required=True)
    run = finish()
    slots, kv_heads, head_dim = tiny_dims()
    shape = (f"input_ids:1,-1;position_ids:1,-1;past_length:1;pad_lengths:1;"
             f"past_key_values:1024,1,{slots},{kv_heads},{head_dim}")
    f = flags(compiled.argv)
    assert f["precision_mode"] == "must_keep_origin_dtype" and f["dynamic_dims"] == "1,1;16,16;128,128"
    assert f["input_shape"] == shape and f["soc_version"] == "Ascend910B3"
    assert "--precision_mode=must_keep_origin_dtype" in run.data.tags["atc_command"]
    assert "--dynamic_dims=1,1;16,16;128,128" in run.data.tags["atc_command"]
    assert run.data.tags["atc.input_shape"] == shape and "atc_op_check" not in run.data.tags
    assert run.data.metrics["atc_op_check_offenders"] == 0 and atc_runs(calls) == 1
    assert compiled.dynamic_mode == "dynamic_dims" and compiled.dims_gears == AUTO_GEARS
    header, onnx_bytes = read_om(compiled.om_path)
    assert onnx_bytes == exported.onnx_path.read_bytes()
    assert header["precision_mode"] == "must_keep_origin_dtype"
    assert header["dynamic"] == {"kind": "dims", "gears": AUTO_GEARS}
    assert {i["name"]: i["dims"] for i in header["inputs"]}["past_key_values"] == [1024, 1, slots, kv_heads, head_dim]


def test_float32_export_under_must_keep_origin_dtype_is_refused(tmp_path, job, calls, tiny_exports):
    cfg, ctx, finish = job("atc.export_dtype=float32")
    with pytest.raises(OpCheckError) as info:
        ensure_compiled(cfg, ctx, tiny_exports["float32"], required=True)
    run = finish("FAILED")
    message = str(info.value)
    assert "(MatMul): input 0 (A) is float; ATC takes float16" in message
    assert "atc.export_dtype=float16" in message and "under precision must_keep_origin_dtype" in message
    assert atc_runs(calls) == 0
    rows = histogram(download(run, ctx.tracker.client, HISTOGRAM, tmp_path))
    assert int(rows["MatMul"]["nodes"]) > 0 and int(rows["MatMul"]["refused_nodes"]) > 0
    assert rows["MatMul"]["input_dtypes"] == "float"


def test_float32_export_passes_under_force_fp16(tmp_path, job, calls, tiny_exports):
    cfg, ctx, finish = job("atc.export_dtype=float32", "atc.precision_mode=force_fp16")
    compiled = ensure_compiled(cfg, ctx, tiny_exports["float32"], required=True)
    run = finish()
    assert run.data.metrics["atc_op_check_offenders"] == 0 and atc_runs(calls) == 1
    assert flags(compiled.argv)["precision_mode"] == "force_fp16"
    assert read_om(compiled.om_path)[0]["precision_mode"] == "force_fp16"


# ---------------------------------------------------------------------------------------------
# task=compile through the real CLI


def kv_shape_of_tiny_qwen(batch: int = 1) -> str:
    slots, kv_heads, head_dim = tiny_dims()
    return (f"input_ids:{batch},-1;position_ids:{batch},-1;past_length:1;pad_lengths:{batch};"
            f"past_key_values:1024,{batch},{slots},{kv_heads},{head_dim}")


@pytest.mark.slow
def test_cli_dry_run_default_kv_cache(run_cli, tmp_path, mlflow_runs, export_cache):
    result = run_cli("task=compile", "atc.dry_run=true", "atc.soc_version=Ascend910B", export_cache, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ATC dry run" in result.stdout and "ascend_lab compile" in result.stdout
    client, runs = mlflow_runs(tmp_path)
    tags = runs[0].data.tags
    command = tags["atc_command"]
    assert command.startswith("atc --framework=5 --model=") and "--soc_version=Ascend910B" in command
    assert f"'--input_shape={kv_shape_of_tiny_qwen()}'" in command
    assert "'--dynamic_dims=1,1;16,16;128,128'" in command and "--precision_mode=must_keep_origin_dtype" in command
    assert tags["onnx_sha256"] and tags["compile_skipped"].startswith("dry run")
    assert HISTOGRAM in artifacts(runs[0], client)


@pytest.mark.slow
@pytest.mark.parametrize("overrides,text", [
    (("atc.precision_mode=force_fp16", "atc.precision_mode_v2=fp16"), "cannot be combined with atc.precision_mode"),
    (("atc.dynamic_mode=dynamic_dims",), "needs gears"),
    (("atc.dynamic_mode=shape_range", "atc.soc_version=Ascend310"), "not supported on Ascend310"),
    (("atc.soc_version=Ascend999",), "Ascend910_9362"),
    (("atc.soc_version=910B3",), "did you mean Ascend910B3"),
])
def test_cli_invalid_combinations(run_cli, tmp_path, overrides, text):
    result = run_cli("task=compile", "atc.dry_run=true", *overrides, timeout=120)
    assert result.returncode == 1 and text in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "export_cache").exists()  # rejected before any work


@pytest.mark.slow
def test_cli_compile_with_stand_in_atc(run_cli, tmp_path, mlflow_runs, export_cache):
    calls = tmp_path / "atc_calls.txt"
    env = {**cli_env([FAKE_BIN]), "FAKE_ATC_CALLS": str(calls)}
    first = run_cli("task=compile", export_cache, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert SUCCESS_LINE in first.stdout
    second = run_cli("task=compile", export_cache, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert atc_runs(calls) == 1
    client, runs = mlflow_runs(tmp_path)
    runs = sorted(runs, key=lambda r: r.info.start_time)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.metrics["compile_cache_hit"] for r in runs] == [0, 1]
    om = Path(runs[0].data.tags["om_path"])
    header, _ = read_om(om)
    assert header["dynamic"] == {"kind": "dims", "gears": AUTO_GEARS}
    assert header["precision_mode"] == "must_keep_origin_dtype"
    assert runs[0].data.tags["atc.input_shape"] == kv_shape_of_tiny_qwen()
    assert runs[0].data.tags["om_sha256"] == runs[1].data.tags["om_sha256"]
    assert runs[0].data.tags["onnx_sha256"] == runs[1].data.tags["onnx_sha256"]
    assert {"atc.log", HISTOGRAM, "compile.json"} <= artifacts(runs[0], client)


@pytest.mark.slow
def test_cli_concurrent_same_key_compiles_run_atc_once(tmp_path, mlflow_runs, compose, export_cache):
    """Two task=compile processes in one launch dir, started together, the stand-in atc slowed down:
    one runs atc, the other waits on the key's lock and reuses its .om."""
    from ascend_lab.config.tracking import TrackingConfig
    from ascend_lab.context import JobContext
    from ascend_lab.export import ensure_exported
    from ascend_lab.tracking import prepare_store

    # The graph is exported up front (and the store created, as in a sweep), so both jobs reach the
    # compile at about the same moment.
    cfg = validate(compose("task=compile", export_cache))
    ensure_exported(cfg, JobContext(cfg, Tracker(), tmp_path, tmp_path), dtype=cfg.atc.export_dtype)
    prepare_store(TrackingConfig(), tmp_path)
    calls = tmp_path / "atc_calls.txt"
    env = {**cli_env([FAKE_BIN]), "FAKE_ATC_CALLS": str(calls), "FAKE_ATC_DELAY_S": "10"}
    command = [sys.executable, "-m", "ascend_lab.run", "task=compile", export_cache]
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert atc_runs(calls) == 1, calls.read_text()
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2 and [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.metrics["export_cache_hit"] for r in runs] == [1, 1]
    assert sorted(r.data.metrics["compile_cache_hit"] for r in runs) == [0, 1]
    assert len({r.data.tags["om_sha256"] for r in runs}) == 1
    assert len({r.data.tags["om_path"] for r in runs}) == 1
    # Both jobs asked before the .om was published (a job that finds it published skips the op check),
    # so the one that did not run atc waited on the lock.
    assert all("atc_op_check_offenders" in r.data.metrics for r in runs), \
        "the jobs did not overlap; raise FAKE_ATC_DELAY_S"
    om_dir = tmp_path / "outputs" / "om"
    assert len([p for p in om_dir.iterdir() if p.is_dir()]) == 1


@pytest.mark.slow
def test_cli_op_check_refuses_int8_graph_before_atc(run_cli, tmp_path, mlflow_runs, export_cache):
    calls = tmp_path / "atc_calls.txt"
    env = {**cli_env([FAKE_BIN]), "FAKE_ATC_CALLS": str(calls)}
    args = ("task=compile", "export.quantize=int8", "atc.export_dtype=float32", export_cache)
    result = run_cli(*args, env=env, timeout=300)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr and not calls.exists()
    for text in ("(com.microsoft::MatMulNBits): domain 'com.microsoft' has no ATC parser", "atc was not run",
                 "export.graph", "drop export.quantize", "AMCT", "atc.skip_op_check=true", HISTOGRAM):
        assert text in result.stderr, text
    client, runs = mlflow_runs(tmp_path)
    [run] = runs
    assert run.info.status == "FAILED" and run.data.tags["atc_op_check"].startswith("failed: ")
    rows = histogram(download(run, client, HISTOGRAM, tmp_path))
    assert rows["MatMulNBits"]["domain"] == "com.microsoft" and int(rows["MatMulNBits"]["refused_nodes"]) > 0
    # The expert override reaches atc, which refuses the foreign domain itself.
    skipped = run_cli(*args, "atc.skip_op_check=true", env=env, timeout=300)
    assert skipped.returncode == 1 and "E19010" in skipped.stderr and "MatMulNBits" in skipped.stderr
    assert atc_runs(calls) == 1


@pytest.mark.slow
def test_cli_compile_without_atc_fails_clearly(run_cli, tmp_path, export_cache):
    if cann_toolkit.find_atc() is not None or cann_toolkit.find_set_env() is not None:
        pytest.skip("a CANN toolkit is installed on this host")
    result = run_cli("task=compile", "tracking=off", export_cache, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "CANN toolkit is not installed or its environment is not loaded" in result.stderr
    assert "/usr/local/Ascend/ascend-toolkit/set_env.sh" in result.stderr
    assert not (tmp_path / "outputs" / "om").exists()
