"""ATC's ``--input_shape`` and gears, derived from the exported graph's inputs and the config (pure).

Symbolic dims are sized by role: ``batch`` → benchmark.batch_size, ``seq`` → benchmark.seq_len,
``capacity`` (the kv_cache graph's cache) → export.kv_capacity. Under ``atc.dynamic_mode=auto`` the
kv_cache graph gets ``--dynamic_dims`` gears over its sequence dim — 1 for a decode step, then
export.prefill_chunks — with batch and capacity static (two ``-1`` per gear: input_ids and
position_ids; older docs cap a gear at four); other graphs compile static.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ascend_lab.config.atc import MAX_GEARS, AtcConfig
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.config.export import ExportConfig
from ascend_lab.errors import ConfigError

# Symbolic dim names the exporters use → the role that sizes them.
_DIM_ROLES = {
    "batch": "batch", "batch_size": "batch", "b": "batch",
    "seq": "seq", "seq_len": "seq", "sequence": "seq", "sequence_length": "seq",
    "capacity": "capacity", "kv_capacity": "capacity",
}
# Inputs whose -1s one gear lists, at most (atlasatcparam dynamic_dims; older docs, e.g. Atlas 200I DK A2).
MAX_DYNAMIC_DIMS_PER_GEAR = 4


@dataclass(frozen=True)
class GraphInput:
    name: str
    dims: tuple[int | str | None, ...]  # int: fixed; str: symbolic name; None: unnamed dynamic
    dtype: str = "float32"


@dataclass
class InputShapes:
    """What ``--input_shape`` and the gear flags say, per graph input in graph order."""

    dims: dict[str, list[str]]  # input name → ATC dim tokens ("16", "-1", "1~8")
    mode: str = "static"
    batch_gears: list[int] | None = None
    dims_gears: list[list[int]] | None = None

    @property
    def input_shape(self) -> str:
        return ";".join(f"{name}:{','.join(tokens)}" for name, tokens in self.dims.items())


def dim_role(symbol: str | None) -> str | None:
    """batch / seq / capacity for an exporter's symbolic dim name, else None."""
    if not symbol:
        return None
    return _DIM_ROLES.get(symbol.strip().lower().replace(" ", ""))


def read_graph_inputs(onnx_path: Path, dynamic_axes: Mapping[str, Mapping[Any, str]] | None = None) -> list[GraphInput]:
    """The ONNX graph's real inputs (initializers excluded); unnamed dynamic dims are named from
    ``dynamic_axes`` (the exporter's ``{input: {axis: name}}``) where it has them."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        axes = {int(k): v for k, v in ((dynamic_axes or {}).get(value.name) or {}).items()}
        tensor = value.type.tensor_type
        dims: list[int | str | None] = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param") and dim_role(dim.dim_param):
                dims.append(dim.dim_param)
            else:
                dims.append(axes.get(axis) or (dim.dim_param or None))
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        except Exception:  # noqa: BLE001 - an exotic dtype only affects the label
            dtype = str(tensor.elem_type)
        inputs.append(GraphInput(value.name, tuple(dims), dtype))
    return inputs


def _shape_template(graph_inputs: Sequence[GraphInput]) -> str:
    return ";".join(f"{g.name}:{','.join(str(d) if isinstance(d, int) else 'N' for d in g.dims)}" for g in graph_inputs)


def _parse_input_shape(text: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for entry in text.split(";"):
        name, _, dims = entry.rpartition(":")
        parsed[name] = dims.split(",") if dims else []
    return parsed


def _roles(graph_inputs: Sequence[GraphInput]) -> set[str]:
    return {dim_role(d) for g in graph_inputs for d in g.dims if isinstance(d, str)} - {None}


def effective_mode(graph_inputs: Sequence[GraphInput], atc_cfg: AtcConfig) -> str:
    """``atc.dynamic_mode`` with ``auto`` resolved: dynamic_dims for a graph with a cache, else static."""
    if atc_cfg.dynamic_mode != "auto":
        return atc_cfg.dynamic_mode
    return "dynamic_dims" if "capacity" in _roles(graph_inputs) else "static"


def derive_input_shapes(graph_inputs: Sequence[GraphInput], atc_cfg: AtcConfig, benchmark_cfg: BenchmarkConfig,
                        export_cfg: ExportConfig) -> InputShapes:
    """``--input_shape`` tokens and gears for ``graph_inputs`` under ``atc.dynamic_mode``.

    Raises :class:`ConfigError` naming the key to change when the graph and config disagree.
    """
    mode = effective_mode(graph_inputs, atc_cfg)
    if atc_cfg.input_shape:
        return _explicit_shapes(graph_inputs, atc_cfg, benchmark_cfg, mode)
    batch, seq = benchmark_cfg.batch_size, benchmark_cfg.seq_len
    static = {"batch": batch, "seq": seq, "capacity": export_cfg.kv_capacity}
    dynamic_roles: set[str] = set()
    auto_gears = atc_cfg.dynamic_mode == "auto" and mode == "dynamic_dims"
    if mode == "dynamic_batch_size":
        dynamic_roles = {"batch"}
    elif mode == "dynamic_dims":
        dynamic_roles = {"seq"} if auto_gears else set(atc_cfg.dynamic_dim_names)
    if mode == "shape_range":
        max_batch, max_seq = max(benchmark_cfg.batch_sizes), atc_cfg.max_seq_len or seq
        bounds = {"batch": (1, max_batch), "seq": (1, max_seq), "capacity": (1, export_cfg.kv_capacity)}

    dims: dict[str, list[str]] = {}
    slots: list[tuple[str, int, str]] = []  # (input, axis, role) of every -1, in --input_shape order
    for graph_input in graph_inputs:
        tokens = []
        for axis, dim in enumerate(graph_input.dims):
            if isinstance(dim, int) and dim > 0:
                tokens.append(str(dim))
                continue
            role = dim_role(dim) if isinstance(dim, str) else None
            if role is None:
                raise ConfigError("atc.input_shape", None,
                                  f"cannot size dim {axis} ({dim!r}) of graph input {graph_input.name!r}; set it "
                                  f"explicitly, e.g. atc.input_shape='{_shape_template(graph_inputs)}'")
            if role in dynamic_roles:
                tokens.append("-1")
                slots.append((graph_input.name, axis, role))
            elif mode == "shape_range":
                lo, hi = bounds[role]
                tokens.append(f"{lo}~{hi}" if hi > lo else str(hi))
            else:
                tokens.append(str(static[role]))
        dims[graph_input.name] = tokens

    shapes = InputShapes(dims, mode)
    if mode == "dynamic_batch_size":
        if not slots:
            raise ConfigError("atc.dynamic_mode", atc_cfg.dynamic_mode, "the graph has no batch dim to make dynamic "
                              f"(inputs: {_shape_template(graph_inputs)})")
        shapes.batch_gears = _batch_gears(atc_cfg, benchmark_cfg)
    elif mode == "dynamic_dims":
        if auto_gears:
            chunks = sorted({1, *export_cfg.prefill_chunks})
            shapes.dims_gears = [[size for _ in slots] for size in chunks]
        else:
            shapes.dims_gears = _expand_dims_gears(atc_cfg, slots, static)
        if len(slots) > MAX_DYNAMIC_DIMS_PER_GEAR:
            raise ConfigError("atc.dynamic_dim_names", atc_cfg.dynamic_dim_names,
                              f"{len(slots)} dims would be -1 in every gear; ATC's dynamic_dims allows at most "
                              f"{MAX_DYNAMIC_DIMS_PER_GEAR} per gear (the kv_cache graph needs only its sequence dim)")
        if not 1 < len(shapes.dims_gears) <= MAX_GEARS:
            raise ConfigError("export.prefill_chunks" if auto_gears else "atc.dynamic_dims",
                              export_cfg.prefill_chunks if auto_gears else atc_cfg.dynamic_dims,
                              f"ATC needs 2 to {MAX_GEARS} dynamic_dims gears")
    if "capacity" in _roles(graph_inputs) and mode not in ("dynamic_dims", "shape_range"):
        raise ConfigError("atc.dynamic_mode", atc_cfg.dynamic_mode,
                          "the kv_cache graph runs 1 token per decode step and export.prefill_chunks per prompt "
                          "chunk, so its sequence dim needs gears: use atc.dynamic_mode=auto")
    return shapes


def _batch_gears(atc_cfg: AtcConfig, benchmark_cfg: BenchmarkConfig) -> list[int]:
    key, gears = ("atc.dynamic_batch_sizes", atc_cfg.dynamic_batch_sizes) if atc_cfg.dynamic_batch_sizes \
        else ("benchmark.batch_sizes", benchmark_cfg.batch_sizes)
    if not 1 < len(gears) <= MAX_GEARS:
        raise ConfigError(key, gears, f"dynamic_batch_size needs 2 to {MAX_GEARS} batch gears "
                                      "(set atc.dynamic_batch_sizes, or use atc.dynamic_mode=static)")
    if len(set(gears)) != len(gears):
        raise ConfigError(key, gears, "batch gears must be distinct")
    return list(gears)


def _expand_dims_gears(atc_cfg: AtcConfig, slots: list[tuple[str, int, str]],
                       static: dict[str, int]) -> list[list[int]]:
    """Gears as ATC wants them, one value per -1: given per -1 already, or per dynamic dim name
    (``batch,seq`` → every batch and seq -1)."""
    names = list(atc_cfg.dynamic_dim_names)
    if not slots:
        raise ConfigError("atc.dynamic_dim_names", names, "none of these dims occurs in the graph's inputs")
    order = ", ".join(f"{name}[{axis}]({role})" for name, axis, role in slots)
    gears = []
    for text in atc_cfg.dynamic_dims or []:
        values = [int(v) for v in text.split(",")]
        if len(values) == len(names):
            sizes = {**static, **dict(zip(names, values, strict=True))}
            values = [sizes[role] for _, _, role in slots]
        elif len(values) != len(slots):
            raise ConfigError("atc.dynamic_dims", atc_cfg.dynamic_dims,
                              f"gear {text!r} needs {len(names)} values (one per atc.dynamic_dim_names: "
                              f"{','.join(names)}) or {len(slots)} (one per -1: {order})")
        gears.append(values)
    if len({tuple(g) for g in gears}) != len(gears):
        raise ConfigError("atc.dynamic_dims", atc_cfg.dynamic_dims, "gears must be distinct")
    return gears


def _explicit_shapes(graph_inputs: Sequence[GraphInput], atc_cfg: AtcConfig, benchmark_cfg: BenchmarkConfig,
                     mode: str) -> InputShapes:
    """atc.input_shape as given, checked against the graph so mistakes fail before ATC runs."""
    parsed = _parse_input_shape(atc_cfg.input_shape)
    by_name = {g.name: g for g in graph_inputs}
    key, value = "atc.input_shape", atc_cfg.input_shape
    for name, tokens in parsed.items():
        if name not in by_name:
            raise ConfigError(key, value, f"{name!r} is not a graph input; inputs are {', '.join(by_name)}")
        if len(tokens) != len(by_name[name].dims):
            raise ConfigError(key, value, f"{name} has {len(by_name[name].dims)} dims in the graph, not {len(tokens)}")
    for g in graph_inputs:
        if g.name not in parsed and not all(isinstance(d, int) and d > 0 for d in g.dims):
            raise ConfigError(key, value, f"graph input {g.name!r} has dynamic dims and needs a shape here")
    tokens = [(name, axis, t) for name, ts in parsed.items() for axis, t in enumerate(ts)]
    minus_ones = [(name, axis) for name, axis, t in tokens if t == "-1"]
    ranges = [t for _, _, t in tokens if "~" in t]
    shapes = InputShapes({g.name: parsed[g.name] for g in graph_inputs if g.name in parsed}, mode)
    if mode == "static" and (minus_ones or ranges):
        raise ConfigError(key, value, "-1 and lo~hi ranges need a dynamic atc.dynamic_mode "
                                      "(dynamic_batch_size, dynamic_dims or shape_range)")
    if mode in ("dynamic_batch_size", "dynamic_dims") and (ranges or not minus_ones):
        raise ConfigError(key, value, f"dynamic_mode={mode} needs -1 in the dynamic dims and no ranges")
    if mode == "shape_range" and not (ranges or minus_ones):
        raise ConfigError(key, value, "dynamic_mode=shape_range needs lo~hi ranges (or -1) in some dims")
    if mode == "dynamic_batch_size":
        if any(axis != 0 for _, axis in minus_ones):
            raise ConfigError(key, value, "dynamic_batch_size allows -1 only in the batch dim (dim 0)")
        shapes.batch_gears = _batch_gears(atc_cfg, benchmark_cfg)
    elif mode == "dynamic_dims":
        gears = [[int(v) for v in g.split(",")] for g in atc_cfg.dynamic_dims or []]
        if not gears:
            raise ConfigError("atc.dynamic_dims", atc_cfg.dynamic_dims,
                              "an explicit atc.input_shape with -1 needs atc.dynamic_dims gears")
        for gear in gears:
            if len(gear) != len(minus_ones):
                raise ConfigError("atc.dynamic_dims", atc_cfg.dynamic_dims,
                                  f"each gear needs {len(minus_ones)} values, one per -1 in atc.input_shape")
        shapes.dims_gears = gears
    return shapes
