"""``acl.mdl``: load the stand-in .om, describe it, datasets, dynamic gears and execute (onnxruntime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import _precision, _sim, prof
from ._sim import (
    ACL_DTYPES, ACL_ERROR_DESERIALIZE_MODEL, ACL_ERROR_GE_FAILURE, ACL_ERROR_INVALID_FILE, ACL_ERROR_INVALID_MODEL_ID,
    ACL_ERROR_INVALID_PARAM, ACL_ERROR_INVALID_RESOURCE_HANDLE, ACL_ERROR_MODEL_INPUT_NOT_MATCH,
    ACL_ERROR_MODEL_NOT_DYNAMIC, ACL_ERROR_MODEL_OUTPUT_NOT_MATCH, ACL_ERROR_READ_MODEL_FAILURE,
    ACL_ERROR_RESOURCE_NOT_MATCH, DYNAMIC_TENSOR_NAME, AclFail, Dataset, Model, api, check, nbytes,
)

# The code the simulator returns when onnxruntime itself fails inside execute.
EXECUTE_FAILED = 507011


# ---------------------------------------------------------------- model structure helpers

def _dynamic(model: Model) -> dict | None:
    return model.header.get("dynamic")


def _graph_inputs(model: Model) -> list[dict]:
    """The inputs of the compiled graph (without the mbatch input)."""
    return model.inputs[:-1] if _dynamic(model) else model.inputs


def _gears(model: Model) -> list:
    dyn = _dynamic(model)
    return list(dyn["gears"]) if dyn else [None]


def _concrete_dims(model: Model, gear) -> list[list[int]]:
    """Each graph input's dims at ``gear`` (a batch size, or the values of the -1s in input order)."""
    dyn = _dynamic(model)
    if dyn is None:
        return [list(i["dims"]) for i in _graph_inputs(model)]
    if dyn["kind"] == "batch":
        return [[gear if d == -1 else d for d in i["dims"]] for i in _graph_inputs(model)]
    values = iter(gear)
    return [[next(values) if d == -1 else d for d in i["dims"]] for i in _graph_inputs(model)]


def _full_dims(model: Model, gear) -> list[int]:
    return [d for dims in _concrete_dims(model, gear) for d in dims]


def _shape_range(model: Model) -> bool:
    return _dynamic(model) is None and any(d < 0 for i in model.inputs for d in i["dims"])


def _input_size(model: Model, index: int) -> int:
    spec = model.inputs[index]
    if _shape_range(model) and -1 in spec["dims"]:
        return 0  # as documented for dynamic-shape models: sizes are unknown until run time
    if _dynamic(model) and index == len(model.inputs) - 1:
        return nbytes(spec["dims"], spec["dtype"])
    # Dynamic models are sized for their largest gear.
    return max(nbytes(_concrete_dims(model, gear)[index], spec["dtype"]) for gear in _gears(model))


def _run(model: Model, dims_per_input: list[list[int]], arrays: list[np.ndarray] | None = None,
         session=None) -> list[np.ndarray]:
    """Run the model's graph; ``session``: another session of it (prof.py's profiling session) instead of its own."""
    graph_inputs = _graph_inputs(model)
    if arrays is None:
        arrays = [np.zeros(d, dtype=i["dtype"]) for d, i in zip(dims_per_input, graph_inputs)]
    feeds = {i["name"]: a for i, a in zip(graph_inputs, arrays)}
    names = [o["name"] for o in model.outputs]
    results = (session or model.session).run(names, feeds)
    return [np.asarray(r).astype(o["dtype"], copy=False) for r, o in zip(results, model.outputs)]


def _max_output_dims(model: Model) -> list[list[int]]:
    """Output dims at the largest profile (documented for get_output_dims on dynamic models)."""
    if _shape_range(model) or all(d >= 0 for o in model.outputs for d in o["dims"]):
        return [list(o["dims"]) for o in model.outputs]
    best: list[list[int]] | None = None
    for gear in _gears(model):
        shapes = [list(r.shape) for r in _run(model, _concrete_dims(model, gear))]
        if best is None:
            best = shapes
        else:
            best = [s if int(np.prod(s)) > int(np.prod(b)) else b for s, b in zip(shapes, best)]
    return best


# ---------------------------------------------------------------- load / unload

def _parse_header(header: object) -> None:
    check(isinstance(header, dict) and isinstance(header.get("inputs"), list)
          and isinstance(header.get("outputs"), list) and "soc_version" in header, ACL_ERROR_DESERIALIZE_MODEL)
    for spec in header["inputs"] + header["outputs"]:
        check(isinstance(spec.get("name"), str) and isinstance(spec.get("dims"), list)
              and spec.get("dtype") in ACL_DTYPES, ACL_ERROR_DESERIALIZE_MODEL)
    nodes = header.get("output_nodes")
    check(nodes is None or (isinstance(nodes, list) and len(nodes) == len(header["outputs"]) and all(
        isinstance(n, dict) and isinstance(n.get("op_name"), str) and isinstance(n.get("edge_index"), int)
        for n in nodes)), ACL_ERROR_DESERIALIZE_MODEL)
    dyn = header.get("dynamic")
    if dyn is None:
        # -1 without gears only in a true dynamic-shape (shape range) model.
        check(header.get("input_shape_ranges") or all(d >= 0 for i in header["inputs"] for d in i["dims"]),
              ACL_ERROR_DESERIALIZE_MODEL)
        return
    check(dyn.get("kind") in ("batch", "dims") and dyn.get("gears"), ACL_ERROR_DESERIALIZE_MODEL)
    unknowns = sum(d == -1 for i in header["inputs"] for d in i["dims"])
    if dyn["kind"] == "batch":
        check(unknowns > 0 and all(isinstance(g, int) and g > 0 for g in dyn["gears"]), ACL_ERROR_DESERIALIZE_MODEL)
    else:
        check(all(len(g) == unknowns for g in dyn["gears"]), ACL_ERROR_DESERIALIZE_MODEL)


@api("mdl.load_from_file", "tuple")
def load_from_file(path: str):
    ctx = _sim.require_context()
    file = Path(path)
    check(file.is_file(), ACL_ERROR_INVALID_FILE)
    try:
        header, onnx_bytes = _sim.om_format.read_om(file)
    except (ValueError, OSError):  # bad magic, a truncated or garbled header (json errors are ValueErrors)
        raise AclFail(ACL_ERROR_READ_MODEL_FAILURE)
    _parse_header(header)
    # An .om runs only on the chip it was compiled for.
    check(header["soc_version"] == _sim.state.chip, ACL_ERROR_GE_FAILURE)
    import onnxruntime as ort

    # The chip computes in the dtypes the precision mode chose at compile time (_precision.py has the
    # rules and their sources); float16 is emulated by rounding, which onnxruntime's CastChainElimination
    # would undo, so that optimisation is off.
    mode = _precision.execution_mode(header)
    source = header.get("external_data_from")
    if source is not None and mode != _precision.ORIGIN:
        # The stand-in runs graphs with external weights (over 2 GB) from their file, unlowered.
        raise RuntimeError(f"simulator: {file} keeps its weights in {source}'s external data; only "
                           "must_keep_origin_dtype is emulated for such graphs")
    try:
        lowered = source or _precision.lower(onnx_bytes, mode, saturate=_precision.saturates(header["soc_version"]))
        session = ort.InferenceSession(lowered, providers=["CPUExecutionProvider"],
                                       disabled_optimizers=["CastChainElimination"])
    except Exception:  # truncated or corrupt graph bytes
        raise AclFail(ACL_ERROR_DESERIALIZE_MODEL)
    inputs = [dict(i) for i in header["inputs"]]
    dyn = header.get("dynamic")
    if dyn:
        # GE sizes the mbatch input by the -1 values of --input_shape and writes only those (the audit of GE's
        # SetDynamicDims, shared Ascend notes §8; set_input_dynamic_dims still takes every input's full dims).
        count = 1 if dyn["kind"] == "batch" else sum(d == -1 for i in inputs for d in i["dims"])
        inputs.append({"name": DYNAMIC_TENSOR_NAME, "dims": [count], "dtype": "int64"})
    model_id = _sim.state.handle()
    _sim.state.models[model_id] = Model(model_id=model_id, path=str(file), header=header, session=session,
                                         context=ctx, inputs=inputs, outputs=[dict(o) for o in header["outputs"]],
                                         source=lowered)
    return model_id, 0


def _model_in_current_context(model_id: int) -> Model:
    ctx = _sim.require_context()
    model = _sim.state.models.get(model_id)
    check(model is not None, ACL_ERROR_INVALID_MODEL_ID)
    # Documented: load, execute and unload must run in the same context.
    check(model.context == ctx, ACL_ERROR_RESOURCE_NOT_MATCH)
    return model


@api("mdl.unload", "ret")
def unload(model_id: int) -> int:
    _model_in_current_context(model_id)
    del _sim.state.models[model_id]
    return 0


# ---------------------------------------------------------------- description

@api("mdl.create_desc", "value")
def create_desc() -> int:
    _sim.require_init()
    handle = _sim.state.handle()
    _sim.state.descs[handle] = None
    return handle


@api("mdl.destroy_desc", "ret")
def destroy_desc(desc: int) -> int:
    check(desc in _sim.state.descs, ACL_ERROR_INVALID_RESOURCE_HANDLE)
    del _sim.state.descs[desc]
    return 0


@api("mdl.get_desc", "ret")
def get_desc(desc: int, model_id: int) -> int:
    _sim.require_init()
    check(desc in _sim.state.descs, ACL_ERROR_INVALID_RESOURCE_HANDLE)
    model = _sim.state.models.get(model_id)
    check(model is not None, ACL_ERROR_INVALID_MODEL_ID)
    if model.max_output_dims is None:
        model.max_output_dims = _max_output_dims(model)
    _sim.state.descs[desc] = model_id
    return 0


def _described(desc: int) -> Model:
    model_id = _sim.state.descs.get(desc, "missing")
    check(model_id != "missing" and model_id in _sim.state.models, ACL_ERROR_INVALID_RESOURCE_HANDLE)
    return _sim.state.models[model_id]


def _spec(desc: int, index: int, which: str) -> tuple[Model, dict]:
    model = _described(desc)
    specs = model.inputs if which == "in" else model.outputs
    check(isinstance(index, int) and 0 <= index < len(specs), ACL_ERROR_INVALID_PARAM)
    return model, specs[index]


@api("mdl.get_num_inputs", "value")
def get_num_inputs(desc: int) -> int:
    return len(_described(desc).inputs)


@api("mdl.get_num_outputs", "value")
def get_num_outputs(desc: int) -> int:
    return len(_described(desc).outputs)


@api("mdl.get_input_name_by_index", "value")
def get_input_name_by_index(desc: int, index: int) -> str:
    return _spec(desc, index, "in")[1]["name"]


def _output_name(model: Model, index: int) -> str:
    """The name pyACL reports for an output. For a model converted from ONNX (framework 5) it is
    "output op name:output edge index:output name" (aclpythondevg "get_output_name_by_index"; C API
    aclmdlGetOutputNameByIndex, aclcppdevg_03_1457; Ascend/parser acl_graph_parser_util.cc
    GetOutputNodesNameAndIndex builds it); open-mmlab/mmdeploy mmdeploy/backend/ascend/wrapper.py strips it
    with ``dims['name'].split(':')[-1]`` on get_output_dims' name, so the dims "name" carries the same form.
    Input names stay the graph's names (ascend.md §6)."""
    name = model.outputs[index]["name"]
    nodes = model.header.get("output_nodes")
    if model.header.get("framework") == 5 and nodes:
        if nodes[index].get("named") is False:  # built with --out_nodes: "op_name:edge_index" (aclcppdevg_03_1457)
            return f"{nodes[index]['op_name']}:{nodes[index]['edge_index']}"
        return f"{nodes[index]['op_name']}:{nodes[index]['edge_index']}:{name}"
    return name


@api("mdl.get_output_name_by_index", "value")
def get_output_name_by_index(desc: int, index: int) -> str:
    model, _ = _spec(desc, index, "out")
    return _output_name(model, index)


@api("mdl.get_input_index_by_name", "tuple")
def get_input_index_by_name(desc: int, name: str):
    names = [i["name"] for i in _described(desc).inputs]
    check(name in names, ACL_ERROR_INVALID_PARAM)
    return names.index(name), 0


def _io_dims(name: str, dims: list[int]) -> dict:
    return {"name": name, "dimCount": len(dims), "dims": list(dims)}


@api("mdl.get_input_dims", "tuple")
def get_input_dims(desc: int, index: int):
    _, spec = _spec(desc, index, "in")
    return _io_dims(spec["name"], spec["dims"]), 0


@api("mdl.get_output_dims", "tuple")
def get_output_dims(desc: int, index: int):
    model, _ = _spec(desc, index, "out")
    return _io_dims(_output_name(model, index), model.max_output_dims[index]), 0


@api("mdl.get_cur_output_dims", "tuple")
def get_cur_output_dims(desc: int, index: int):
    model, _ = _spec(desc, index, "out")
    dims = (model.cur_output_dims or model.max_output_dims)[index]
    return _io_dims(_output_name(model, index), dims), 0


@api("mdl.get_input_data_type", "value")
def get_input_data_type(desc: int, index: int) -> int:
    return ACL_DTYPES[_spec(desc, index, "in")[1]["dtype"]]


@api("mdl.get_output_data_type", "value")
def get_output_data_type(desc: int, index: int) -> int:
    return ACL_DTYPES[_spec(desc, index, "out")[1]["dtype"]]


@api("mdl.get_input_size_by_index", "value")
def get_input_size_by_index(desc: int, index: int) -> int:
    model, _ = _spec(desc, index, "in")
    return _input_size(model, index)


@api("mdl.get_output_size_by_index", "value")
def get_output_size_by_index(desc: int, index: int) -> int:
    model, spec = _spec(desc, index, "out")
    dims = model.max_output_dims[index]
    return 0 if -1 in dims else nbytes(dims, spec["dtype"])


@api("mdl.get_dynamic_batch", "tuple")
def get_dynamic_batch(desc: int):
    dyn = _dynamic(_described(desc))
    gears = list(dyn["gears"]) if dyn and dyn["kind"] == "batch" else []
    return {"batchCount": len(gears), "batch": gears}, 0


@api("mdl.get_input_dynamic_gear_count", "tuple")
def get_input_dynamic_gear_count(desc: int, index: int):
    check(index == -1, ACL_ERROR_INVALID_PARAM)  # documented: reserved, fixed to -1
    dyn = _dynamic(_described(desc))
    return (len(dyn["gears"]) if dyn and dyn["kind"] == "dims" else 0), 0


@api("mdl.get_input_dynamic_dims", "tuple")
def get_input_dynamic_dims(desc: int, index: int, gear_count: int):
    check(index == -1, ACL_ERROR_INVALID_PARAM)
    model = _described(desc)
    dyn = _dynamic(model)
    check(dyn is not None and dyn["kind"] == "dims" and gear_count == len(dyn["gears"]), ACL_ERROR_INVALID_PARAM)
    return [_io_dims("", _full_dims(model, gear)) for gear in dyn["gears"]], 0


# ---------------------------------------------------------------- datasets

@api("mdl.create_dataset", "value")
def create_dataset() -> int:
    _sim.require_init()
    handle = _sim.state.handle()
    _sim.state.datasets[handle] = Dataset()
    return handle


@api("mdl.add_dataset_buffer", "tuple_ds")
def add_dataset_buffer(dataset: int, buffer: int):
    check(dataset in _sim.state.datasets and buffer in _sim.state.data_buffers, ACL_ERROR_INVALID_PARAM)
    _sim.state.datasets[dataset].buffers.append(buffer)
    return dataset, 0


@api("mdl.get_dataset_num_buffers", "value")
def get_dataset_num_buffers(dataset: int) -> int:
    check(dataset in _sim.state.datasets, ACL_ERROR_INVALID_PARAM)
    return len(_sim.state.datasets[dataset].buffers)


@api("mdl.get_dataset_buffer", "value")
def get_dataset_buffer(dataset: int, index: int) -> int:
    ds = _sim.state.datasets.get(dataset)
    check(ds is not None and 0 <= index < len(ds.buffers), ACL_ERROR_INVALID_PARAM)
    return ds.buffers[index]


@api("mdl.destroy_dataset", "ret")
def destroy_dataset(dataset: int) -> int:
    # Documented: the data buffers in it are not destroyed.
    check(dataset in _sim.state.datasets, ACL_ERROR_INVALID_PARAM)
    del _sim.state.datasets[dataset]
    return 0


def _buffer_memory(dataset: int, index: int) -> tuple[bytearray, int, int]:
    """(backing bytes, offset, size) of the data buffer at ``index`` of ``dataset``."""
    ds = _sim.state.datasets.get(dataset)
    check(ds is not None and 0 <= index < len(ds.buffers), ACL_ERROR_INVALID_PARAM)
    ptr, size = _sim.state.data_buffers.get(ds.buffers[index], (None, 0))
    check(ptr is not None, ACL_ERROR_INVALID_RESOURCE_HANDLE)
    region, offset = _sim.find_region(ptr)
    check(region.kind == "device", ACL_ERROR_INVALID_PARAM)
    return region.data, offset, size


# ---------------------------------------------------------------- dynamic gears

def _set_dynamic(model_id: int, dataset: int, index: int, kind: str, values: list[int],
                 selected: list[int] | None = None) -> None:
    """Write ``values`` into the mbatch buffer; ``selected``: the full dims they stand for (dims gears)."""
    model = _model_in_current_context(model_id)
    dyn = _dynamic(model)
    check(dyn is not None, ACL_ERROR_MODEL_NOT_DYNAMIC)
    # Only the kind the model was compiled with may be used.
    check(dyn["kind"] == kind, ACL_ERROR_INVALID_PARAM)
    check(index == len(model.inputs) - 1, ACL_ERROR_INVALID_PARAM)
    data, offset, size = _buffer_memory(dataset, index)
    payload = np.asarray(values, dtype=np.int64).tobytes()
    check(size >= len(payload), ACL_ERROR_INVALID_PARAM)
    data[offset:offset + len(payload)] = payload  # the set_* call fills the mbatch buffer
    _sim.state.datasets[dataset].dynamic[model_id] = (kind, list(values), list(selected or values))


@api("mdl.set_dynamic_batch_size", "ret")
def set_dynamic_batch_size(model_id: int, dataset: int, index: int, batch: int) -> int:
    model = _model_in_current_context(model_id)
    dyn = _dynamic(model)
    check(dyn is None or dyn["kind"] != "batch" or batch in dyn["gears"], ACL_ERROR_INVALID_PARAM)
    _set_dynamic(model_id, dataset, index, "batch", [batch])
    return 0


@api("mdl.set_input_dynamic_dims", "ret")
def set_input_dynamic_dims(model_id: int, dataset: int, index: int, dims: dict) -> int:
    model = _model_in_current_context(model_id)
    check(isinstance(dims, dict) and isinstance(dims.get("dims"), list)
          and dims.get("dimCount") == len(dims["dims"]), ACL_ERROR_INVALID_PARAM)
    dyn = _dynamic(model)
    if dyn is not None and dyn["kind"] == "dims":
        # The full concatenated shape of all inputs, equal to one compiled gear (GE checks the static dims too).
        check(any(list(dims["dims"]) == _full_dims(model, g) for g in dyn["gears"]), ACL_ERROR_INVALID_PARAM)
        compiled = [d for spec in model.inputs[:-1] for d in spec["dims"]]
        written = [value for value, d in zip(dims["dims"], compiled) if d == -1]
        _set_dynamic(model_id, dataset, index, "dims", written, list(dims["dims"]))
        return 0
    _set_dynamic(model_id, dataset, index, "dims", list(dims["dims"]))
    return 0


@api("mdl.set_dynamic_hw_size", "ret")
def set_dynamic_hw_size(model_id: int, dataset: int, index: int, height: int, width: int) -> int:
    _model_in_current_context(model_id)
    raise AclFail(ACL_ERROR_INVALID_PARAM)  # the stand-in format has no dynamic-HW models


# ---------------------------------------------------------------- execute

def _chosen_gear(model: Model, dataset: int):
    """The gear the mbatch buffer selects; the dataset must have been configured for this model."""
    dyn = _dynamic(model)
    ds = _sim.state.datasets[dataset]
    check(model.model_id in ds.dynamic, ACL_ERROR_MODEL_INPUT_NOT_MATCH)
    kind, values, selected = ds.dynamic[model.model_id]
    data, offset, _ = _buffer_memory(dataset, len(model.inputs) - 1)
    stored = np.frombuffer(bytes(data[offset:offset + 8 * len(values)]), dtype=np.int64).tolist()
    check(stored == values, ACL_ERROR_MODEL_INPUT_NOT_MATCH)  # someone wrote into the mbatch buffer
    if dyn["kind"] == "batch":
        return values[0]
    return next(g for g in dyn["gears"] if _full_dims(model, g) == selected)


@api("mdl.execute", "ret")
def execute(model_id: int, in_dataset: int, out_dataset: int) -> int:
    model = _model_in_current_context(model_id)
    # Shape-range models take per-run tensor descs (aclmdlSetDatasetTensorDesc), which this simulator lacks.
    check(not _shape_range(model), ACL_ERROR_MODEL_INPUT_NOT_MATCH)
    ins = _sim.state.datasets.get(in_dataset)
    outs = _sim.state.datasets.get(out_dataset)
    check(ins is not None and outs is not None, ACL_ERROR_INVALID_PARAM)
    check(len(ins.buffers) == len(model.inputs), ACL_ERROR_MODEL_INPUT_NOT_MATCH)
    check(len(outs.buffers) == len(model.outputs), ACL_ERROR_MODEL_OUTPUT_NOT_MATCH)
    for index in range(len(model.inputs)):
        # get_input_size_by_index is the largest gear's size; GE refuses a smaller buffer, not a larger one
        # (GE's input copy checks the user buffer holds the model's input: shared Ascend notes §8).
        check(_buffer_memory(in_dataset, index)[2] >= _input_size(model, index), ACL_ERROR_MODEL_INPUT_NOT_MATCH)
    gear = _chosen_gear(model, in_dataset) if _dynamic(model) else None
    dims = _concrete_dims(model, gear)
    arrays = []
    for index, (spec, shape) in enumerate(zip(_graph_inputs(model), dims)):
        data, offset, _ = _buffer_memory(in_dataset, index)
        count = nbytes(shape, spec["dtype"])
        arrays.append(np.frombuffer(bytes(data[offset:offset + count]), dtype=spec["dtype"]).reshape(shape))
    try:
        # While profiling collects (prof.py), the graph runs on a profiling session of it, timing each operator.
        results = _run(model, dims, arrays, session=prof.profiling_session(model))
    except Exception:
        raise AclFail(EXECUTE_FAILED)
    for index, result in enumerate(results):
        data, offset, size = _buffer_memory(out_dataset, index)
        check(size >= nbytes(model.max_output_dims[index], model.outputs[index]["dtype"]),
              ACL_ERROR_MODEL_OUTPUT_NOT_MATCH)
        payload = np.ascontiguousarray(result).tobytes()
        check(len(payload) <= size, ACL_ERROR_MODEL_OUTPUT_NOT_MATCH)
        data[offset:offset + len(payload)] = payload
    model.cur_output_dims = [list(r.shape) for r in results]
    _sim.state.executions += 1
    return 0
