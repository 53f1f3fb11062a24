"""The check before ``atc`` runs: is every node of the graph one ATC's ONNX parser takes?

ATC parses only the ``ai.onnx`` domain (a ``com.microsoft`` op such as ``MatMulNBits`` fails with
``E19010 No parser is registered``), and each op's kernels take only the dtypes its "ONNX operator
specification" page lists (an int64 ``CumSum`` is refused). :data:`OPS_TABLE` holds those pages as data
(``atc_onnx_ops.json``, each row citing its page); :func:`check_graph` reads every node's domain, op type
and input dtypes (from ONNX shape inference) against it. Finding this before ATC saves a compile that
can take an hour and returns only an error code.

The dtype an input is checked in depends on ``--precision_mode`` (atlasatcparam precision_mode page):
``must_keep_origin_dtype`` keeps the graph's dtypes, so they must be listed as they are; the other modes
(``force_fp16``, ATC's default, among them) run a float32 op in float16 where the op has float16
kernels, so a float32 input passes where either is listed.

ATC's parser looks every node up as ``ai.onnx::<model opset>::<OpType>`` (Ascend/parser
parser/onnx/onnx_parser.cc ConstructOriType; no fallback to a lower opset), so an op is refused at an opset its
page does not list: ReduceMean is listed for v8–v16 (atlasoxol_09_0123), so every RMSNorm of an opset-17
export stops a CANN without the newer plugin. Where ATC's sources register more opsets than the page lists,
the row's ``parser_opsets`` says so with its source (Unsqueeze's opset-13 form; Constant, which the parser maps
before any opset lookup).

ATC folds constants before it selects kernels (GE's constant folding): a node whose inputs are all
constants — initializers, ``Constant`` outputs, folded nodes' outputs, and ``Shape``/``Size`` of a tensor
whose shape the compile fixes (every gear of a dims/batch-gear model is a static graph; only true
dynamic-shape ranges keep shapes open) — never runs, so its dtypes are not checked; its op type still
needs a parser. That is what lets the int64 shape arithmetic exporters emit through, while an int64
``CumSum`` over a graph input is refused.
"""

from __future__ import annotations

import collections
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("atc_onnx_ops.json")
ONNX_DOMAINS = ("", "ai.onnx")
# onnx TensorProto element types → the dtype spellings of the operator pages.
ELEMENT_DTYPES = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
                  9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 16: "bfloat16"}
KEEP_DTYPE_MODES = ("must_keep_origin_dtype", "origin")


def opset_range(text: str) -> tuple[int, int] | None:
    """``"v8-v16"`` → (8, 16); ``"any"`` → None (no opset checked)."""
    if text == "any":
        return None
    low, _, high = text.partition("-")
    return int(low.lstrip("v")), int((high or low).lstrip("v"))


def accepted_opsets(row: dict) -> tuple[int, int] | None:
    """The opsets ATC parses an op at: the page's, widened where its sources register more (``parser_opsets``)."""
    return opset_range(row.get("parser_opsets") or row["opsets"])


@functools.lru_cache(maxsize=1)
def ops_table() -> dict:
    return json.loads(TABLE_FILE.read_text(encoding="utf-8"))["ops"]


@dataclass(frozen=True)
class Offender:
    node: str
    op: str
    domain: str
    problem: str  # "domain", "op", "opset", "dtype"
    input_index: int | None = None
    input_name: str | None = None
    dtype: str | None = None
    allowed: tuple[str, ...] = ()
    opset: int | None = None
    page: str = ""

    def describe(self) -> str:
        where = f"{self.domain}::{self.op}" if self.domain not in ONNX_DOMAINS else self.op
        if self.problem == "domain":
            return f"{self.node} ({where}): domain {self.domain!r} has no ATC parser (only ai.onnx)"
        if self.problem == "op":
            return f"{self.node} ({where}): not among ATC's ONNX operators"
        if self.problem == "opset":
            return (f"{self.node} ({where}) at opset {self.opset}: ATC parses {self.op} at opsets "
                    f"{'-'.join(self.allowed)} only ({self.page})")
        return (f"{self.node} ({where}): input {self.input_index} ({self.input_name}) is {self.dtype}; "
                f"ATC takes {', '.join(self.allowed)}")


@dataclass
class OpCheck:
    precision: str
    opset: int = 0  # the graph's ai.onnx opset
    histogram: collections.Counter = field(default_factory=collections.Counter)  # (domain, op) → nodes
    input_dtypes: dict = field(default_factory=dict)  # (domain, op) → {dtype of any input}
    offenders: list[Offender] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.offenders

    @property
    def refused_nodes(self) -> int:
        """Nodes with at least one problem (a node may have several refused inputs)."""
        return len({o.node for o in self.offenders})

    def summary(self, limit: int = 12) -> str:
        """The offenders, grouped by (op, problem, input, dtype) with example node names."""
        groups: dict[tuple, list[Offender]] = collections.defaultdict(list)
        for o in self.offenders:
            groups[(o.domain, o.op, o.problem, o.input_index, o.dtype)].append(o)
        lines = []
        for items in list(groups.values())[:limit]:
            first = items[0]
            more = f" (and {len(items) - 1} more such nodes)" if len(items) > 1 else ""
            lines.append("  " + first.describe() + more)
        if len(groups) > limit:
            lines.append(f"  … {len(groups) - limit} more kinds")
        return "\n".join(lines)

    def fitting_opset(self) -> int | None:
        """The highest opset every op of the graph is parsed at (None: no common opset)."""
        table, low, high = ops_table(), 0, 10**6
        for domain, op in self.histogram:
            row = table.get(op) if domain in ONNX_DOMAINS else None
            bounds = accepted_opsets(row) if row else None
            if bounds:
                low, high = max(low, bounds[0]), min(high, bounds[1])
        return high if low <= high else None

    def histogram_rows(self) -> list[dict]:
        table = ops_table()
        rows = []
        for (domain, op), count in sorted(self.histogram.items(), key=lambda item: (-item[1], item[0])):
            row = table.get(op) if domain in ONNX_DOMAINS else None
            bad = len({o.node for o in self.offenders if o.op == op and o.domain == domain})
            rows.append({"op": op, "domain": domain or "ai.onnx", "nodes": count,
                         "input_dtypes": ",".join(sorted(self.input_dtypes.get((domain, op), ()))),
                         "in_atc_table": row is not None, "refused_nodes": bad,
                         "documented_opsets": row["opsets"] if row else "",
                         "parser_opsets": row.get("parser_opsets", "") if row else "", "graph_opset": self.opset,
                         "page": row["page"] if row else ""})
        return rows


def precision_of(precision_mode: str | None, precision_mode_v2: str | None) -> str:
    """The effective precision setting (ATC's default when neither flag is given is force_fp16)."""
    return precision_mode or precision_mode_v2 or "force_fp16"


def check_graph(onnx_path: Path, precision_mode: str | None = None, precision_mode_v2: str | None = None,
                static_shapes: bool = True) -> OpCheck:
    """``static_shapes``: False for a shape-range compile, where Shape/Size outputs are not constants."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - a graph shape inference cannot follow is still checked by op type
        inferred = model
    dtypes = _value_dtypes(inferred)
    folded = _constant_nodes(inferred, static_shapes)
    opset = next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), 0)
    result = OpCheck(precision_of(precision_mode, precision_mode_v2), opset)
    table = ops_table()
    for index, node in enumerate(inferred.graph.node):
        domain, name = node.domain, node.name or f"{node.op_type}_{index}"
        result.histogram[(domain, node.op_type)] += 1
        seen = result.input_dtypes.setdefault((domain, node.op_type), set())
        seen.update(d for d in (dtypes.get(i) for i in node.input if i) if d)
        if domain not in ONNX_DOMAINS:
            result.offenders.append(Offender(name, node.op_type, domain, "domain"))
            continue
        row = table.get(node.op_type)
        if row is None:
            result.offenders.append(Offender(name, node.op_type, domain, "op"))
            continue
        bounds = accepted_opsets(row)
        if bounds and not bounds[0] <= opset <= bounds[1]:
            result.offenders.append(Offender(name, node.op_type, domain, "opset", allowed=(f"v{bounds[0]}",
                                             f"v{bounds[1]}"), opset=opset, page=row["page"]))
            continue
        if index in folded:
            continue
        for position, input_name in enumerate(node.input):
            if not input_name or position >= len(row["inputs"]):
                continue
            spec_name, allowed = row["inputs"][position]
            dtype = dtypes.get(input_name)
            if allowed is None or dtype is None or _accepted(dtype, allowed, result.precision):
                continue
            result.offenders.append(Offender(name, node.op_type, domain, "dtype", position, spec_name, dtype,
                                             tuple(allowed)))
    return result


def _accepted(dtype: str, allowed: list[str], precision: str) -> bool:
    if dtype in allowed:
        return True
    # Any mode but must_keep_origin_dtype runs a float32 input in float16 where the op has float16 kernels.
    return dtype == "float" and precision not in KEEP_DTYPE_MODES and "float16" in allowed


def _constant_nodes(model, static_shapes: bool) -> set[int]:
    """Indexes of the nodes constant folding removes (see the module docstring)."""
    graph = model.graph
    constant = {init.name for init in graph.initializer}
    folded: set[int] = set()
    for index, node in enumerate(graph.node):  # ONNX nodes are topologically sorted
        inputs = [name for name in node.input if name]
        shape_only = static_shapes and node.op_type in ("Shape", "Size")
        if node.op_type == "Constant" or shape_only or all(name in constant for name in inputs):
            folded.add(index)
            constant.update(node.output)
    return folded


def _value_dtypes(model) -> dict[str, str]:
    dtypes: dict[str, str] = {}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        element = value.type.tensor_type.elem_type
        if element:
            dtypes[value.name] = ELEMENT_DTYPES.get(element, str(element))
    for init in graph.initializer:
        dtypes[init.name] = ELEMENT_DTYPES.get(init.data_type, str(init.data_type))
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    dtypes[node.output[0]] = ELEMENT_DTYPES.get(attribute.t.data_type, str(attribute.t.data_type))
    return dtypes
