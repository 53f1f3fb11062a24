"""How the simulator runs a compiled graph's float32 computation, by the .om's precision flags.

On the chip, ATC's precision mode decides the dtype each operator computes in. The rules, from the
--precision_mode page (https://www.hiascend.com/llms-content/document/detail/canncommercial/canncommercial_900_devaids_atctool_atlasatcparam_16_0068_html.md)
and the --precision_mode_v2 page (https://www.hiascend.com/llms-content/document/detail/canncommercial/canncommercial_900_devaids_atctool_atlasatcparam_16_0069_html.md):

  force_fp16 (v2: fp16)   "算子支持float16和float32数据类型时,强制选择float16": every float32 op runs in
                          float16. It is the default for inference ("force_fp16(默认值)"; v2 "fp16(默认值)"),
                          so a compiled .om with no precision flag runs this way too.
  must_keep_origin_dtype (v2: origin)   "保持原图精度": the graph's own dtypes.
  allow_fp32_to_fp16      "对于矩阵类算子,使用float16。对于矢量类算子,优先保持原图精度": matrix ops in float16,
                          vector ops keep float32 (every vector op in tests/fakes/atc_onnx_ops.json has a
                          float32 kernel).
  allow_mix_precision / allow_mix_precision_fp16 / mixed_float16   the built-in lists live in
                          aic-<soc>-ops-info.json ("precision_reduce"), which we do not have; modelled like
                          allow_fp32_to_fp16 (matrix ops lowered, the rest kept), an approximation.
  force_fp32 / cube_fp16in_fp32out   matrix ops take float16 inputs and give float32 outputs; vector ops
                          float32.
  allow_mix_precision_bf16 / mixed_bfloat16 / mixed_hif8   not modelled: run as the graph's dtypes
                          (bfloat16 keeps float32's range, so no overflow to show).

"Runs in float16" is emulated, not executed with float16 kernels: every float32 value an affected op
reads or writes is rounded to float16 and back (Cast→float16→Cast→float32 inserted around it), float32
constants and initializers are rounded the same way, and the graph's inputs and outputs keep their
dtypes (ATC keeps the model's I/O types and casts inside). Rounding keeps IEEE float16 semantics, so a
value beyond ±65504 becomes ±inf: a mask filled with finfo(float32).min becomes -inf, and softmax over a
row that is masked everywhere (left padding) gives NaN, as on the chip (shared/reference/ascend.md §6).
On chips that only saturate (see ``saturates``) every float result is also clipped to ±MAX of its dtype
and NaN becomes 0, so there the same mask gives -65504 and a finite (uniform) row instead of NaN.
This is our own equivalent of onnxconverter-common's ``float16.convert_float_to_float16(model,
keep_io_types=True)``; that converter (1.16.0) was tried with onnx 1.23 / onnxruntime 1.32 and (a) leaves
``Cast(to=FLOAT)`` nodes unconverted, so onnxruntime refuses the model ("Type (tensor(float16)) of output
arg ... does not match expected type (tensor(float))"), and (b) clamps constants to ±1e4 by default, hiding
exactly the overflow this is for. Emulating by rounding also needs no float16 CPU kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FULL = "float16"            # every float32 op lowered
MATRIX = "matrix_float16"   # matrix ops lowered (inputs and outputs)
CUBE_IN = "cube_fp16_in"    # matrix ops take float16 inputs, give float32
ORIGIN = "origin"           # the graph's own dtypes

MATRIX_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")

_BY_MODE = {
    "force_fp16": FULL, "fp16": FULL,
    "must_keep_origin_dtype": ORIGIN, "origin": ORIGIN,
    "allow_fp32_to_fp16": MATRIX, "allow_mix_precision": MATRIX, "allow_mix_precision_fp16": MATRIX,
    "mixed_float16": MATRIX,
    "force_fp32": CUBE_IN, "cube_fp16in_fp32out": CUBE_IN,
    "allow_mix_precision_bf16": ORIGIN, "mixed_bfloat16": ORIGIN, "mixed_hif8": ORIGIN,
}


def execution_mode(header: dict[str, Any]) -> str:
    """FULL / MATRIX / CUBE_IN / ORIGIN for an .om header (tests/fakes/om_format.py)."""
    mode = header.get("precision_mode") or header.get("precision_mode_v2")
    if mode is None:
        # A compiled .om (the fake atc records its framework) got ATC's default, force_fp16. A header a
        # test wrote by hand, without "framework", runs the graph as it is.
        return FULL if "framework" in header else ORIGIN
    return _BY_MODE.get(mode, ORIGIN)


# Overflow handling of the chip the .om is for. Atlas A2/A3 (Ascend910B1..B4, Ascend910_93xx) default to
# INF/NaN mode (IEEE 754); "Atlas 训练系列产品/Atlas 推理系列产品/Atlas 200I/500 A2 推理产品,仅支持饱和模式":
# Ascend910A/ProA/ProB/PremiumA, Ascend310/310P*, Ascend310B* saturate — an overflow becomes ±MAX of the
# dtype and a NaN becomes 0 (INF_NAN_MODE_ENABLE page, https://hiascend.com/document/detail/zh/Pytorch/600/apiref/Envvariables/Envir_004.html ;
# aclrtFloatOverflowMode, canncommercial_900 aclcppdevg_03_1389). The chip split follows torch_npu's
# IsSupportInfNan (Ascend/pytorch torch_npu/csrc/core/npu/NpuVariables.cpp: SocVersion >= Ascend910B1 and
# < Ascend310B1, or >= Ascend910_9391). So on a 310P/310B a finfo(float32).min mask under force_fp16 becomes
# -65504, not -inf, and a fully masked row averages instead of turning NaN.
_INF_NAN_PREFIXES = ("Ascend910B1", "Ascend910B2", "Ascend910B3", "Ascend910B4", "Ascend910_93")


def saturates(soc_version: str) -> bool:
    return not str(soc_version).startswith(_INF_NAN_PREFIXES)


_FP16_MAX = float(np.finfo(np.float16).max)


def _round(values: np.ndarray, saturate: bool) -> np.ndarray:
    if saturate:
        values = np.nan_to_num(np.clip(values, -_FP16_MAX, _FP16_MAX), nan=0.0)
    with np.errstate(over="ignore"):
        return values.astype(np.float16).astype(np.float32)


def _round_tensor(tensor, saturate: bool) -> None:
    from onnx import TensorProto, numpy_helper

    if tensor.data_type != TensorProto.FLOAT:
        return
    rounded = numpy_helper.from_array(_round(numpy_helper.to_array(tensor), saturate), tensor.name)
    tensor.CopyFrom(rounded)


def lower(onnx_bytes: bytes, mode: str, saturate: bool = False) -> bytes:
    """The graph rewritten so that what ``mode`` computes in float16 is rounded to float16, and, on a
    saturating chip, every float result saturates (±MAX of its dtype, NaN → 0)."""
    if mode == ORIGIN and not saturate:
        return onnx_bytes
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001  (inference is best effort; declared types still count)
        inferred = graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input, *inferred.output]
             if v.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in graph.initializer})
    initializers = {i.name for i in graph.initializer}
    serial = iter(range(1 << 30))
    extra_inits: list = []
    limits: dict[tuple[str, str], tuple[str, str, str]] = {}

    def fresh(base: str, tag: str) -> str:
        return f"{base}__sim_{tag}_{next(serial)}"

    def saturation(source: str, target: str, value_dtype: str, range_dtype: str) -> list:
        """Clip to ±MAX of ``range_dtype``, then NaN → 0 (saturation mode, see above); the value is of
        ``value_dtype`` (float16's range is applied to a float32 value before it is rounded)."""
        key = (value_dtype, range_dtype)
        if key not in limits:
            limit = np.finfo(range_dtype).max
            limits[key] = fresh("sat", "lo"), fresh("sat", "hi"), fresh("sat", "zero")
            extra_inits.extend(numpy_helper.from_array(np.array(v, value_dtype), n)
                               for v, n in zip((-limit, limit, 0), limits[key]))
        lo, hi, zero = limits[key]
        clipped, isnan = fresh(target, "clip"), fresh(target, "isnan")
        return [helper.make_node("Clip", [source, lo, hi], [clipped]),
                helper.make_node("IsNaN", [clipped], [isnan]),
                helper.make_node("Where", [isnan, zero, clipped], [target])]

    def round_trip(source: str, target: str) -> list:
        nodes = []
        if saturate:
            clipped = fresh(target, "pre")
            nodes += saturation(source, clipped, "float32", "float16")
            source = clipped
        half = fresh(target, "fp16")
        return nodes + [helper.make_node("Cast", [source], [half], to=TensorProto.FLOAT16),
                        helper.make_node("Cast", [half], [target], to=TensorProto.FLOAT)]

    def rounded_copy(value: str) -> tuple[str, list]:
        target = fresh(value, "rounded")
        return target, round_trip(value, target)

    def lowered(node) -> bool:
        return mode == FULL or (node.op_type in MATRIX_OPS and node.domain in ("", "ai.onnx"))

    nodes: list = []
    if mode == FULL:
        for init in graph.initializer:
            _round_tensor(init, saturate)
        # Graph inputs enter the float16 graph through a cast (ATC keeps the model's input dtype).
        renamed = {}
        for value in graph.input:
            if types.get(value.name) == TensorProto.FLOAT and value.name not in initializers:
                renamed[value.name], pair = rounded_copy(value.name)
                nodes += pair
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in renamed:
                    node.input[i] = renamed[name]
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:  # Constant, ConstantOfShape
                    _round_tensor(attr.t, saturate)
                elif attr.name == "value_float":
                    attr.f = float(_round(np.float32(attr.f), saturate))
                elif attr.name == "value_floats":
                    attr.floats[:] = _round(np.asarray(attr.floats, np.float32), saturate).tolist()
    for node in list(graph.node):
        pre, post = [], []
        if mode in (MATRIX, CUBE_IN) and lowered(node):
            for i, name in enumerate(node.input):
                if name and types.get(name) == TensorProto.FLOAT:
                    node.input[i], pair = rounded_copy(name)
                    pre += pair
        for i, name in enumerate(node.output):
            elem = types.get(name)
            if not name or elem not in (TensorProto.FLOAT, TensorProto.FLOAT16):
                continue
            if elem == TensorProto.FLOAT and mode in (FULL, MATRIX) and lowered(node):
                raw = fresh(name, "fp32")
                node.output[i] = raw
                post += round_trip(raw, name)
            elif saturate:
                raw = fresh(name, "raw")
                node.output[i] = raw
                dtype = "float16" if elem == TensorProto.FLOAT16 else "float32"
                post += saturation(raw, name, dtype, dtype)
        nodes += [*pre, node, *post]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(extra_inits)
    return model.SerializeToString()
