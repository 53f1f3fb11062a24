"""The stand-in `atc` itself (tests/fakes/bin/atc): the ONNX operator/dtype check written from the CANN
documents, precision-aware; the two .om file name forms; what it records in the .om header.

These tests drive the stand-in directly and do not import ascend_lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FAKES = Path(__file__).resolve().parent / "fakes"
ATC = FAKES / "bin" / "atc"
sys.path.insert(0, str(FAKES))
from om_format import read_om  # noqa: E402

FAILED = "ATC run failed, Please check the detail log, Try 'atc --help' for more information"
SUCCESS = "ATC run success, welcome to the next use."


def run_atc(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ATC), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def compile_args(model: Path, output: Path, shape: str, *extra: str) -> list[str]:
    return ["--framework=5", f"--model={model}", f"--output={output}", "--soc_version=Ascend910B3",
            "--input_format=ND", f"--input_shape={shape}", *extra]


def save(path: Path, nodes, inputs, outputs, initializers=(), opsets=(("", 17),)) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    onnx.save(model, str(path))
    return path


def tensor(name, dtype, shape):
    from onnx import helper

    return helper.make_tensor_value_info(name, dtype, shape)


def const(name, array):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(array), name)


def cumsum_graph(path: Path, dtype) -> Path:
    """position_ids = CumSum(attention_mask, 1): what Hugging Face position code exports (int64)."""
    from onnx import helper

    return save(path, [helper.make_node("CumSum", ["attention_mask", "axis"], ["position_ids"])],
                [tensor("attention_mask", dtype, [1, 8])], [tensor("position_ids", dtype, [1, 8])],
                [const("axis", np.array(1, np.int64))])


def matmul_graph(path: Path, dtype) -> Path:
    from onnx import helper

    np_dtype = np.float16 if dtype == 10 else np.float32
    return save(path, [helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")],
                [tensor("x", dtype, [1, 4])], [tensor("y", dtype, [1, 4])], [const("w", np.eye(4, dtype=np_dtype))])


def assert_refused(result: subprocess.CompletedProcess, code: str, tmp_path: Path) -> list[str]:
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "ATC start working now, please wait for a moment."
    assert FAILED in lines and SUCCESS not in result.stdout
    assert any(line.startswith(f"{code}: ") for line in lines), result.stdout
    assert not list(tmp_path.glob("*.om"))
    return lines


# ---------------------------------------------------------------------------------------------
# Operators and dtypes


def test_int64_cumsum_is_refused_with_the_documented_ez3002_ez3003_chain(tmp_path):
    from onnx import TensorProto as T

    model = cumsum_graph(tmp_path / "m.onnx", T.INT64)
    lines = assert_refused(run_atc(*compile_args(model, tmp_path / "out", "attention_mask:1,8")), "EZ3002", tmp_path)
    head = next(line for line in lines if line.startswith("EZ3002: "))
    # Unnamed nodes get ATC's own name, <OpType>_<n> (Ascend/parser onnx_parser.cc UpdateAllNodeName).
    assert head.startswith("EZ3002: Optype [CumSum] of Ops kernel [AIcoreEngine] is unsupported. Reason: [CumSum_0] "
                           "input 0 (x) is int64")
    assert "float16, float32, int32" in head and "atlasoxol_09_0045" in head
    assert "The format and dtype is not precisely equivalent to format and dtype in op information library" in head
    text = "\n".join(lines)
    assert "EZ3003: No supported Ops kernel and engine are found for [CumSum_0], optype [CumSum]." in text
    assert "Failed to select engine for [CumSum_0][CumSum]." in text
    # int32 is on the page: the same graph in int32 compiles.
    ok = run_atc(*compile_args(cumsum_graph(tmp_path / "i32.onnx", T.INT32), tmp_path / "ok", "attention_mask:1,8"))
    assert ok.returncode == 0 and SUCCESS in ok.stdout, ok.stdout


def test_com_microsoft_matmulnbits_is_refused_with_e19010_listing_every_node(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("MatMulNBits", ["x", "w1", "s1"], ["h"], domain="com.microsoft", name="/l0/MatMulNBits",
                              K=4, N=4, bits=4, block_size=16),
             helper.make_node("MatMulNBits", ["h", "w2", "s2"], ["y"], domain="com.microsoft", name="/l1/MatMulNBits",
                              K=4, N=4, bits=4, block_size=16)]
    inits = [const(n, np.zeros((4, 1, 8), np.uint8)) for n in ("w1", "w2")] + \
            [const(n, np.ones((4,), np.float32)) for n in ("s1", "s2")]
    model = save(tmp_path / "q.onnx", nodes, [tensor("x", T.FLOAT, [1, 4])], [tensor("y", T.FLOAT, [1, 4])], inits,
                 opsets=(("", 17), ("com.microsoft", 1)))
    lines = assert_refused(run_atc(*compile_args(model, tmp_path / "out", "x:1,4")), "E19010", tmp_path)
    text = "\n".join(lines)
    # The documented message, with ATC's <domain>::<opset>::<OpType> original type.
    assert ("E19010: No parser is registered for Op [/l0/MatMulNBits, optype [com.microsoft::1::MatMulNBits]]."
            in lines)
    assert "Solution: Check the version of the installation package and reinstall the package." in text
    assert "TraceBack (most recent call last):" in text
    assert "No parser is registered for Op [/l1/MatMulNBits, optype [com.microsoft::1::MatMulNBits]]." in text
    assert "[stand-in] no row" not in text  # a foreign domain is no table gap


def test_an_ai_onnx_op_without_a_documented_parser_is_refused_with_e19010(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    model = save(tmp_path / "m.onnx", [helper.make_node("HardSwish", ["x"], ["y"])],
                 [tensor("x", T.FLOAT, [1, 4])], [tensor("y", T.FLOAT, [1, 4])])
    lines = assert_refused(run_atc(*compile_args(model, tmp_path / "out", "x:1,4")), "E19010", tmp_path)
    assert "E19010: No parser is registered for Op [HardSwish_0, optype [ai.onnx::17::HardSwish]]." in lines
    assert any("[stand-in] no row in tests/fakes/atc_onnx_ops.json for: HardSwish" in line for line in lines)


@pytest.mark.parametrize("flags, accepted", [
    ((), True),                                             # ATC's default for inference is force_fp16
    (("--precision_mode=force_fp16",), True),
    (("--precision_mode=allow_fp32_to_fp16",), True),
    (("--precision_mode=allow_mix_precision",), True),
    (("--precision_mode_v2=fp16",), True),
    (("--precision_mode_v2=mixed_float16",), True),
    (("--precision_mode=must_keep_origin_dtype",), False),  # the MatMul page lists float16 only
    (("--precision_mode_v2=origin",), False),
])
def test_float32_matmul_depends_on_the_precision_mode(tmp_path, flags, accepted):
    from onnx import TensorProto as T

    model = matmul_graph(tmp_path / "m.onnx", T.FLOAT)
    result = run_atc(*compile_args(model, tmp_path / "out", "x:1,4", *flags))
    if accepted:
        assert result.returncode == 0 and SUCCESS in result.stdout, result.stdout
    else:
        lines = assert_refused(result, "EZ3002", tmp_path)
        head = next(line for line in lines if line.startswith("EZ3002: "))
        assert "[/proj/MatMul] input 0 (x1) is float32, input 1 (x2) is float32" in head
        assert "x1: float16; x2: float16" in head


def test_float16_matmul_compiles_keeping_its_dtypes(tmp_path):
    from onnx import TensorProto as T

    model = matmul_graph(tmp_path / "m.onnx", T.FLOAT16)
    result = run_atc(*compile_args(model, tmp_path / "out", "x:1,4", "--precision_mode=must_keep_origin_dtype"))
    assert result.returncode == 0, result.stdout


def test_every_offending_node_is_listed(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("CumSum", ["mask", "axis"], ["pos"], name="/pos/CumSum"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="/proj/MatMul")]
    model = save(tmp_path / "m.onnx", nodes, [tensor("mask", T.INT64, [1, 4]), tensor("x", T.FLOAT, [1, 4])],
                 [tensor("pos", T.INT64, [1, 4]), tensor("y", T.FLOAT, [1, 4])],
                 [const("axis", np.array(1, np.int64)), const("w", np.eye(4, dtype=np.float32))])
    result = run_atc(*compile_args(model, tmp_path / "out", "mask:1,4;x:1,4",
                                   "--precision_mode=must_keep_origin_dtype"))
    text = "\n".join(assert_refused(result, "EZ3002", tmp_path))
    assert "EZ3003: No supported Ops kernel and engine are found for [/pos/CumSum], optype [CumSum]." in text
    assert "Optype [MatMul] of Ops kernel [AIcoreEngine] is unsupported. Reason: [/proj/MatMul]" in text
    assert "EZ3003: No supported Ops kernel and engine are found for [/proj/MatMul], optype [MatMul]." in text


def test_shape_arithmetic_is_folded_at_static_shapes_but_not_with_shape_ranges(tmp_path):
    """int64 Mul on Shape output: GE folds it at compile time when shapes are static (gears too); with
    lo~hi ranges Shape is runtime data and the Mul page (float, float16, int8, int32) applies."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Mul", ["s", "two"], ["s2"]),
             helper.make_node("Reshape", ["x", "target"], ["flat"]),
             helper.make_node("Cast", ["s2"], ["s2f"], to=T.FLOAT),
             helper.make_node("ReduceSum", ["s2f"], ["total"], keepdims=0)]
    model = save(tmp_path / "m.onnx", nodes, [tensor("x", T.FLOAT, ["b", 4])],
                 [tensor("flat", T.FLOAT, [None]), tensor("total", T.FLOAT, [])],
                 [const("two", np.array([2, 2], np.int64)), const("target", np.array([-1], np.int64))])
    static = run_atc(*compile_args(model, tmp_path / "static", "x:2,4"))
    assert static.returncode == 0, static.stdout
    ranged = run_atc("--framework=5", f"--model={model}", f"--output={tmp_path / 'ranged'}",
                     "--soc_version=Ascend910B3", "--input_format=ND", "--input_shape=x:1~4,4")
    lines = assert_refused(ranged, "EZ3002", tmp_path / "none")
    assert any("Reason: [Mul_1] input 0 (A) is int64, input 1 (B) is int64" in line for line in lines)


def test_documented_quirks_that_are_not_enforced(tmp_path):
    """Reshape's float data (the 80RC3+ pages drop 'float', the 601 page lists it) compiles, and so does the
    opset-13 form of Unsqueeze (axes as an input) at opsets 13 and 17: the page stops at v12, but the
    ops-math plugin registers ai.onnx::13..18::Unsqueeze (atc_opcheck.REGISTERED_BEYOND_PAGE)."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "axes"], ["y"])]
    for opset in (13, 17):
        model = save(tmp_path / f"m{opset}.onnx", nodes, [tensor("x", T.FLOAT, [2, 4])],
                     [tensor("y", T.FLOAT, [1, 8])],
                     [const("shape", np.array([8], np.int64)), const("axes", np.array([0], np.int64))],
                     opsets=(("", opset),))
        result = run_atc(*compile_args(model, tmp_path / f"out{opset}", "x:2,4",
                                       "--precision_mode=must_keep_origin_dtype"))
        assert result.returncode == 0, result.stdout


def test_an_op_at_an_opset_its_page_does_not_list_has_no_parser(tmp_path):
    """ATC's parser registry is keyed ai.onnx::<opset>::<op> with no fallback (Ascend/parser onnx_parser.cc
    ConstructOriType): ReduceMean's page lists v8-v16, so at opset 17 every RMSNorm gets E19010."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], name="/norm/ReduceMean", axes=[-1], keepdims=1)]
    for opset, refused in ((14, False), (16, False), (17, True)):
        model = save(tmp_path / f"r{opset}.onnx", nodes, [tensor("x", T.FLOAT16, [2, 4])],
                     [tensor("y", T.FLOAT16, [2, 1])], opsets=(("", opset),))
        result = run_atc(*compile_args(model, tmp_path / f"out{opset}", "x:2,4"))
        if not refused:
            assert result.returncode == 0, result.stdout
            continue
        lines = assert_refused(result, "E19010", tmp_path / "none")
        assert "E19010: No parser is registered for Op [/norm/ReduceMean, optype [ai.onnx::17::ReduceMean]]." in lines
        assert "[stand-in] no row" not in "\n".join(lines)  # the op has a row; the opset is what is missing


def test_the_stand_in_registry_and_the_project_table_agree_on_opsets():
    """The stand-in's opsets come from the pages' wording plus the parser sources it cites; the project's
    table (ascend_lab/compile/atc_onnx_ops.json) was written separately. Where both list an op they accept the
    same opsets 8-18. Where the pages of two releases differ, the stand-in follows the current pages: e.g.
    Unsqueeze's canncommercial/700 page listed v14-v18 (not v13), the current ones stop at v12; ATC's plugin
    source (13-18) decides, and both tables carry it."""
    import atc_opcheck

    ours = atc_opcheck.load_table()
    project = json.loads((FAKES.parent.parent / "ascend_lab" / "compile" / "atc_onnx_ops.json").read_text())["ops"]
    for op in sorted(set(ours) & set(project)):
        row = project[op]
        text = row.get("parser_opsets") or row["opsets"]
        if text == "any":
            expected = set(range(8, 19))
        else:
            low, high = (int(v.lstrip("v")) for v in text.split("-"))
            expected = set(range(low, high + 1))
        stand_in = {v for v in range(8, 19) if atc_opcheck.registered(op, v, ours)}
        assert stand_in == expected, op


def test_the_table_cites_a_page_for_every_op():
    table = json.loads((FAKES / "atc_onnx_ops.json").read_text())["ops"]
    assert {"CumSum", "MatMul", "Reshape", "Unsqueeze", "Where", "Softmax"} <= set(table)
    for op, row in table.items():
        assert row["page"].startswith("https://www.hiascend.com/") and "atlasoxol_09_" in row["page"], op
        for item in row["inputs"]:
            assert item["dtypes"] is None or all(isinstance(d, str) for d in item["dtypes"]), op
    assert table["CumSum"]["inputs"][0]["dtypes"] == ["float16", "float32", "int32"]
    assert "doc_fix" in table["Reshape"]


# ---------------------------------------------------------------------------------------------
# .om file names and header


@pytest.mark.parametrize("env, extra, name", [
    ({}, (), "out_linux_x86_64.om"),
    ({"FAKE_ATC_OM_NAME": "suffixed"}, ("--host_env_os=linux", "--host_env_cpu=aarch64"), "out_linux_aarch64.om"),
    ({"FAKE_ATC_OM_NAME": "plain"}, (), "out.om"),
])
def test_both_om_name_forms(tmp_path, env, extra, name):
    from onnx import TensorProto as T

    model = matmul_graph(tmp_path / "m.onnx", T.FLOAT)
    result = run_atc(*compile_args(model, tmp_path / "out", "x:1,4", *extra), env=env)
    assert result.returncode == 0, result.stdout
    assert [p.name for p in tmp_path.glob("out*.om")] == [name]


def test_header_records_framework_precision_and_each_outputs_producer(tmp_path):
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Add", ["x", "x"], ["doubled"], name="/model/Add"),
             helper.make_node("Split", ["doubled", "sizes"], ["first", "second"], axis=1),
             helper.make_node("Identity", ["first"], ["first_out"])]
    model = save(tmp_path / "m.onnx", nodes, [tensor("x", T.FLOAT, [1, 4])],
                 [tensor("second", T.FLOAT, [1, 2]), tensor("first_out", T.FLOAT, [1, 2]),
                  tensor("doubled", T.FLOAT, [1, 4])],
                 [const("sizes", np.array([2, 2], np.int64))])
    result = run_atc(*compile_args(model, tmp_path / "out", "x:1,4", "--precision_mode=must_keep_origin_dtype"))
    assert result.returncode == 0, result.stdout
    header, onnx_bytes = read_om(tmp_path / "out_linux_x86_64.om")
    assert onnx_bytes == model.read_bytes()
    assert header["framework"] == 5
    assert header["precision_mode"] == "must_keep_origin_dtype" and header["precision_mode_v2"] is None
    assert [o["name"] for o in header["outputs"]] == ["second", "first_out", "doubled"]
    # Unnamed nodes are numbered among the unnamed ones in graph order: Split_0, Identity_1.
    assert header["output_nodes"] == [{"op_name": "Split_0", "edge_index": 1},
                                      {"op_name": "Identity_1", "edge_index": 0},
                                      {"op_name": "/model/Add", "edge_index": 0}]


def test_dynamic_dims_refuses_data_dependent_intermediate_shapes(tmp_path):
    """The --dynamic_dims page (atlasatcparam_16_0020): no network whose intermediate shapes are dynamic. A
    Range up to an input's value has a data-dependent length no gear fixes; a Range up to a dim the gear fixes
    (Shape, folded) is static in every gear and compiles."""
    from onnx import TensorProto as T
    from onnx import helper

    consts = [const("zero", np.array(0, np.int64)), const("one", np.array(1, np.int64)),
              const("i0", np.array(1, np.int64))]
    by_value = save(tmp_path / "v.onnx", [helper.make_node("Range", ["zero", "n", "one"], ["r"], name="/pos/Range")],
                    [tensor("x", T.FLOAT16, [1, "s"]), tensor("n", T.INT64, [])], [tensor("r", T.INT64, [None])],
                    consts)
    result = run_atc(*compile_args(by_value, tmp_path / "v", "x:1,-1;n:", "--dynamic_dims=2;4"))
    lines = assert_refused(result, "E10001", tmp_path)
    assert any("dynamic intermediate shapes: /pos/Range (Range)" in line for line in lines), lines
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "i0"], ["len"]),
             helper.make_node("Range", ["zero", "len", "one"], ["r"], name="/pos/Range")]
    by_shape = save(tmp_path / "s.onnx", nodes, [tensor("x", T.FLOAT16, [1, "s"])], [tensor("r", T.INT64, [None])],
                    consts)
    ok = run_atc(*compile_args(by_shape, tmp_path / "s", "x:1,-1", "--dynamic_dims=2;4"))
    assert ok.returncode == 0, ok.stdout
