"""What the stand-in ``atc`` checks in an ONNX graph before it "compiles" it, written from CANN sources.

Two stages, in the order ATC runs them:

1. The ONNX parser's pre-check. Every node's original type is built as ``<domain>::<opset>::<OpType>``
   (the empty domain reads ``ai.onnx``) and looked up in the parser registry; each node without a
   parser is reported as ``E19010: No parser is registered for Op [<node>, optype [<type>]].`` and the
   conversion stops after the pre-check, listing every such node.
   Sources: Ascend/parser parser/onnx/onnx_parser.cc (ConstructOriType, Prechecker, UpdateAllNodeName)
   and parser/common/pre_checker.cc (CheckTypeSupported reports E19010 per node); the message text is
   the E19010 page https://www.hiascend.com/document/detail/zh/canncommercial/700/troublemanagement/troubleshooting/atlaserrorcode_15_0102.html
   and the real logs in Ascend/ModelZoo-PyTorch#6, open-mmlab/mmagic#1056.
   ATC parses only the ai.onnx domain (atlasatc_16_0048; shared/reference/ascend.md §6), so a node of
   any other domain (com.microsoft::MatMulNBits, ...) has no parser. An ai.onnx op type without a row
   in ``atc_onnx_ops.json`` is refused the same way: the table is what the documents say ATC supports.

2. Kernel selection. Each node's input dtypes must be listed for that input on the op's "ONNX operator
   specification" page (rows in ``atc_onnx_ops.json``, each with its page URL). A node that no kernel
   takes gets the documented chain EZ3002 (Optype [..] of Ops kernel [..] is unsupported. Reason: ..)
   → EZ3003 (No supported Ops kernel and engine are found for [..], optype [..]) → "Failed to select
   engine for [..][..]". Sources: EZ3002 https://www.hiascend.com/llms-content/document/detail/canncommercial/canncommercial_900_maintenref_troubleshooting_atlaserrorcode_15_0307_html.md ,
   EZ3003 https://www.hiascend.com/document/detail/zh/canncommercial/900/maintenref/troubleshooting/atlaserrorcode_15_0308.html ,
   the real chain in vllm-project/vllm-ascend#4454 and PR #811 (Reason "The format and dtype is not
   precisely equivalent to format and dtype in op information library").

Precision (--precision_mode page, https://www.hiascend.com/llms-content/document/detail/canncommercial/canncommercial_900_devaids_atctool_atlasatcparam_16_0068_html.md ;
--precision_mode_v2 page, https://www.hiascend.com/llms-content/document/detail/canncommercial/canncommercial_900_devaids_atctool_atlasatcparam_16_0069_html.md):
  - force_fp16 (the default for inference; v2: fp16, the v2 default) picks float16 where an op supports
    float16 and float32; allow_fp32_to_fp16, allow_mix_precision*, mixed_* and cube_fp16in_fp32out /
    force_fp32 also lower float32 to float16 where the op has no float32 kernel. So in every mode but
    origin a float32 input passes when the op lists float16 or float32.
  - must_keep_origin_dtype (v2: origin) keeps the graph's dtypes. A float32 op whose kernel is float16
    only cannot be built: "则不能使用该参数值,系统不支持使用低精度" (Atlas 200I DK A2 --precision_mode_v2
    page, https://hiascend.com/document/detail/zh/Atlas200IDKA2DeveloperKit/23.0.RC2/Appendices/ttmutat/atctool_000093.html ;
    601 aoepar_16_044 says the same for must_keep_origin_dtype). Newer pages (900) add an AI CPU fallback
    "如果AI CPU算子也不支持,则执行报错"; the stand-in does not know AI CPU coverage and refuses, as the
    older pages say.
  - In every mode a float16 input passes where only float32 is listed: "如果原图中某算子精度为float16,
    AI Core中该算子的实现不支持float16、仅支持float32和bfloat16,则系统内部会自动采用高精度float32" (same pages).

Nodes that constant folding removes are not checked for kernels: GE folds, at compile time and on the
host, every node whose inputs are all constants, and treats "Shape, Rank, Size pure meta-information
operations" as such (CANN GE design doc "Constant Folding Feature Analysis",
https://gitcode.com/cann/ge/blob/develop/docs/en/design/features/constant_folding.md). With static shapes or
gears every shape is known when each graph is built, so the int64 shape arithmetic exporters emit
(Shape → Gather → Mul → Concat → Reshape) never needs a device kernel; with true dynamic shape (lo~hi ranges
or --input_shape_range) Shape/Size are not folded. An int64 CumSum over attention_mask is runtime data and
is checked.

Opsets. The parser registry is keyed by ``ai.onnx::<opset>::<OpType>`` and ConstructOriType never falls back
to a lower opset (Ascend/parser parser/onnx/onnx_parser.cc), so a node at an opset its plugin does not
register gets the same E19010 as an unknown op. The registered opsets are the ones each op's page lists
(the table's "opsets"), except where ATC's own sources say more (:data:`REGISTERED_BEYOND_PAGE`):
  - Constant: onnx_parser.cc kOnnxOpMap maps it to Const before the versioned lookup (any opset).
  - Unsqueeze: the current pages list v8-v12, but the plugin
    https://gitcode.com/cann/ops-math/blob/master/conversion/unsqueeze/framework/unsequeeze_onnx_plugin.cpp
    registers ai.onnx::13..18::Unsqueeze (UnsqueezeV3, axes as an input), and the canncommercial/700 page
    (atlasoxol_09_0165) listed v14-v18.

Not enforced, on purpose:
  - Inputs the page does not list (opset-13 ``axes`` inputs of Unsqueeze/Squeeze/ReduceSum, ...) and
    inputs whose dtype the page leaves open (Clip min/max, Gemm C, Trilu k).
  - Reshape's data list on the 80RC3+/850/900 pages omits float: a documentation slip (the 601 page lists
    float; Reshape only moves data); see the row's "doc_fix".
  - Output dtypes (e.g. the Cast page's output list lacks int64); only inputs select a kernel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).resolve().with_name("atc_onnx_ops.json")

# --precision_mode / --precision_mode_v2 values that keep the graph's own dtypes (pages cited above).
ORIGIN_MODES = ("must_keep_origin_dtype", "origin")

E19010_SOLUTION = ("Check the version of the installation package and reinstall the package. For details, "
                   "see the operator specifications.")
EZ3002_CAUSE = "The operator type is unsupported in the operator information library due to specification mismatch."
EZ3002_SOLUTION = ("Submit an issue to request for support at https://gitee.com/ascend, or remove this type of "
                   "operators from your model.")
DTYPE_REASON = "The format and dtype is not precisely equivalent to format and dtype in op information library"


def load_table(path: Path = TABLE_PATH) -> dict[str, dict]:
    return json.loads(Path(path).read_text())["ops"]


def keeps_origin(precision_mode: str | None, precision_mode_v2: str | None) -> bool:
    return (precision_mode or precision_mode_v2) in ORIGIN_MODES


def effective_precision(precision_mode: str | None, precision_mode_v2: str | None) -> str:
    """The mode ATC compiles with: the flag given, else the documented inference default force_fp16."""
    return precision_mode or precision_mode_v2 or "force_fp16"


def atc_node_names(graph) -> list[str]:
    """Node names as ATC sees them. Ascend/parser parser/onnx/onnx_parser.cc UpdateAllNodeName: a node
    without a name is called ``<op_type>_<n>``, n counting the unnamed nodes in graph order."""
    names, unnamed = [], 0
    for node in graph.node:
        if node.name:
            names.append(node.name)
        else:
            names.append(f"{node.op_type}_{unnamed}")
            unnamed += 1
    return names


def _opset(model, domain: str) -> int:
    # Ascend/parser onnx_parser.cc ConstructOriType: the version is the model's opset_import for the domain.
    for item in model.opset_import:
        if (item.domain or "") in ((domain,) if domain else ("", "ai.onnx")):
            return item.version
    return 0


def ori_type(model, node) -> str:
    domain = node.domain or "ai.onnx"
    return f"{domain}::{_opset(model, node.domain or '')}::{node.op_type}"


# Opsets ATC's sources register beyond what an op's page lists (see the module docstring); None: any opset.
REGISTERED_BEYOND_PAGE: dict[str, set[int] | None] = {"Constant": None, "Unsqueeze": set(range(13, 19))}


def page_opsets(text: str) -> set[int]:
    """The opsets a page lists, from its wording ("Opset v8/v9/10/v11/v12")."""
    import re

    return {int(v) for v in re.findall(r"v?(\d+)", text.replace("Opset", ""))}


def registered(op_type: str, opset: int, table: dict[str, dict]) -> bool:
    if op_type not in table:
        return False
    beyond = REGISTERED_BEYOND_PAGE.get(op_type, set())
    return beyond is None or opset in beyond or opset in page_opsets(table[op_type]["opsets"])


def parser_errors(model, table: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(one "No parser is registered ..." message per node without a parser, op types missing from the table)."""
    messages, missing = [], []
    opset = _opset(model, "")
    for name, node in zip(atc_node_names(model.graph), model.graph.node):
        if node.domain not in ("", "ai.onnx") or not registered(node.op_type, opset, table):
            messages.append(f"No parser is registered for Op [{name}, optype [{ori_type(model, node)}]].")
            if node.domain in ("", "ai.onnx") and node.op_type not in table and node.op_type not in missing:
                missing.append(node.op_type)
    return messages, missing


def _dtype_name(elem_type: int) -> str | None:
    from onnx import TensorProto, helper

    if not elem_type:
        return None
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except Exception:  # noqa: BLE001  (bfloat16 and friends without a numpy type)
        return TensorProto.DataType.Name(elem_type).lower()


def value_dtypes(model) -> dict[str, str]:
    """dtype of every value in the graph: inputs, initializers, outputs and (by shape inference) the rest."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (inference is best effort; the declared types still count)
        inferred = model
    graph = inferred.graph
    dtypes: dict[str, str] = {}
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.type.HasField("tensor_type"):
            name = _dtype_name(info.type.tensor_type.elem_type)
            if name:
                dtypes[info.name] = name
    for init in graph.initializer:
        name = _dtype_name(init.data_type)
        if name:
            dtypes[init.name] = name
    return dtypes


@dataclass
class DtypeOffender:
    """A node no kernel takes: its offending inputs as (position, page's input name, dtype, listed dtypes)."""

    node: str
    op_type: str
    inputs: list[tuple[int, str, str, list[str]]]
    page: str

    def reason(self, precision: str) -> str:
        got = ", ".join(f"input {i} ({name}) is {dtype}" for i, name, dtype, _ in self.inputs)
        listed = "; ".join(f"{name}: {', '.join(allowed)}" for _, name, _, allowed in self.inputs)
        return (f"[{self.node}] {got} with --precision_mode {precision}; the op information library has "
                f"{listed} (stand-in table row from {self.page}). {DTYPE_REASON}")


def _accepts(dtype: str, allowed: list[str], origin: bool) -> bool:
    if dtype in allowed:
        return True
    # Every mode but origin lowers float32 to float16 where the op has a float16 kernel (precision_mode page).
    if dtype == "float32" and not origin and "float16" in allowed:
        return True
    # float16 with a float32-only kernel runs in float32 (precision_mode / precision_mode_v2 pages, origin).
    return dtype == "float16" and "float32" in allowed


# Ops whose output is not a function of their inputs: never folded.
_NOT_FOLDABLE = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli")


def folded_nodes(model, dynamic_shape: bool) -> set[int]:
    """Indices of the nodes constant folding evaluates at compile time (see the module docstring)."""
    constant = {i.name for i in model.graph.initializer}
    folded = set()
    for index, node in enumerate(model.graph.node):
        inputs = [v for v in node.input if v]
        if node.op_type in _NOT_FOLDABLE:
            continue
        if node.op_type in ("Shape", "Size") and not dynamic_shape:
            fold = True  # meta-information: known once shapes are static
        else:
            fold = all(v in constant for v in inputs)  # Constant (no inputs) included
        if fold:
            folded.add(index)
            constant.update(v for v in node.output if v)
    return folded


def dtype_errors(model, table: dict[str, dict], origin: bool, dynamic_shape: bool = False) -> list[DtypeOffender]:
    dtypes = value_dtypes(model)
    folded = folded_nodes(model, dynamic_shape)
    offenders = []
    for position, (name, node) in enumerate(zip(atc_node_names(model.graph), model.graph.node)):
        spec = table.get(node.op_type)
        if spec is None or position in folded:
            continue
        rows = spec["inputs"]
        bad = []
        for index, value in enumerate(node.input):
            if not value:
                continue  # an omitted optional input
            if index < len(rows):
                row = rows[index]
            elif rows and rows[-1].get("variadic"):
                row = rows[-1]
            else:
                continue  # not listed on the page: not checked
            dtype = dtypes.get(value)
            if row["dtypes"] is None or dtype is None:
                continue  # the page gives no list, or the dtype cannot be inferred
            if not _accepts(dtype, row["dtypes"], origin):
                bad.append((index, row["name"], dtype, row["dtypes"]))
        if bad:
            offenders.append(DtypeOffender(name, node.op_type, bad, spec["page"]))
    return offenders


def output_producers(model) -> list[dict[str, Any]]:
    """For each graph output: the ATC name of the node producing it and that node's output (edge) index.

    These make the ``op_name:edge_index:output_name`` names pyACL returns for ONNX models (aclpythondevg
    "get_output_name_by_index"; Ascend/parser parser/common/acl_graph_parser_util.cc
    GetOutputNodesNameAndIndex joins node name, output index and top name with ':').
    A graph output that no node produces comes from the parser's own nodes (onnx_parser.cc ParseInput:
    an Input node named after the graph input; ParseInitializer: a Const node ``<name>_<n>``, n its
    position among the initializers sorted by name)."""
    names = atc_node_names(model.graph)
    producer = {}
    for name, node in zip(names, model.graph.node):
        for index, value in enumerate(node.output):
            if value:
                producer[value] = (name, index)
    initializers = sorted(i.name for i in model.graph.initializer if i.name)
    out = []
    for output in model.graph.output:
        if output.name in producer:
            op_name, index = producer[output.name]
        elif output.name in initializers:
            op_name, index = f"{output.name}_{initializers.index(output.name)}", 0
        else:
            op_name, index = output.name, 0
        out.append({"name": output.name, "op_name": op_name, "edge_index": index})
    return out
