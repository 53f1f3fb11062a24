"""The per-layer cache of onnxruntime's derived kv_cache graph: one input per layer's keys and values, each stored
the way the attention reads it, so a decode step never copies the past. (Not :mod:`ascend_lab.export.cache_layout`,
which picks the rank of the contract's one cache input for ATC.)

The contract's cache (:mod:`ascend_lab.graph_contract`) is one slot-major tensor ``[capacity, batch, 2·layers,
kv_heads, dim]``: what ATC compiles and what a device-to-device copy per execution suits. The attention reads each
layer's keys as ``[batch, kv_heads, dim, capacity]`` and values as ``[batch, kv_heads, capacity, dim]``, so the
exported graph runs a ``Gather`` and a ``Transpose`` per layer and per K/V on every step: two copies of the whole
past, growing with the context. :func:`split_cache_input` rewrites a kv_cache graph (for onnxruntime only, as a
derived graph) so that each of those ``Gather → Transpose`` pairs becomes a graph input of exactly the
``Transpose``'s output layout (:data:`LAYER_INPUT` ``.format(j)``, j = 2·layer for keys, 2·layer + 1 for values),
and the cache's ``Shape`` is rebuilt from one of them. The new tokens' keys and values still come out as
``present_key_values`` ``[seq, batch, 2·layers, kv_heads, dim]``; the runtime writes them into the per-layer
buffers (:class:`~ascend_lab.runtimes.onnxruntime.runtime.OrtCacheBackend`).
"""

from __future__ import annotations

from ascend_lab import graph_contract as gc
from ascend_lab.errors import AscendLabError

LAYER_INPUT = gc.PAST_LAYER_INPUT
KEY_PERM = (1, 2, 3, 0)  # [capacity, batch, kv_heads, dim] → [batch, kv_heads, dim, capacity]
VALUE_PERM = (1, 2, 0, 3)  # → [batch, kv_heads, capacity, dim]


def split_cache_input(model) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto`` of the kv_cache graph) in place as the module docstring says;
    returns how many ``Gather → Transpose`` pairs were replaced by inputs."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    cache = next((i for i in graph.input if i.name == gc.PAST_KEY_VALUES), None)
    if cache is None:
        raise AscendLabError(f"not a kv_cache graph: no {gc.PAST_KEY_VALUES} input")
    dims = cache.type.tensor_type.shape.dim
    capacity, batch, _, kv_heads, dim = (d.dim_param or d.dim_value for d in dims)
    elem = cache.type.tensor_type.elem_type
    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                 if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    constants.update({i.name: numpy_helper.to_array(i) for i in graph.initializer})
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    replaced: dict[str, str] = {}  # Transpose output → new input
    dead = []
    shapes = []
    for node in consumers.get(gc.PAST_KEY_VALUES, []):
        if node.op_type == "Shape" and not node.attribute:
            shapes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        index = constants.get(node.input[1]) if node.op_type == "Gather" else None
        readers = consumers.get(node.output[0], [])
        if (index is None or index.ndim != 0 or axis != 2 or len(readers) != 1
                or readers[0].op_type != "Transpose"):
            raise AscendLabError(f"kv_cache graph: {gc.PAST_KEY_VALUES} is read by {node.op_type} {node.name!r} in a "
                                 "way the per-layer cache does not know (expected Gather(axis=2) → Transpose)")
        j = int(index)
        perm = tuple(next(a.ints for a in readers[0].attribute if a.name == "perm"))
        if perm != (KEY_PERM if j % 2 == 0 else VALUE_PERM):
            raise AscendLabError(f"kv_cache graph: layer slice {j} is transposed with perm {perm}, not "
                                 f"{KEY_PERM if j % 2 == 0 else VALUE_PERM}")
        name = LAYER_INPUT.format(j)
        shape = [batch, kv_heads, dim, capacity] if j % 2 == 0 else [batch, kv_heads, capacity, dim]
        graph.input.append(helper.make_tensor_value_info(name, elem, shape))
        replaced[readers[0].output[0]] = name
        dead += [node, readers[0]]
    if not replaced:
        raise AscendLabError(f"kv_cache graph: no per-layer read of {gc.PAST_KEY_VALUES} found")
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in replaced:
                node.input[k] = replaced[name]
    for node in dead:
        graph.node.remove(node)
    # The cache's shape [capacity, batch, 2·layers, kv_heads, dim], rebuilt from the values of layer 0
    # [batch, kv_heads, capacity, dim] for whatever read it.
    values = LAYER_INPUT.format(1)
    layers2 = len(replaced)
    for k, shape in enumerate(shapes):
        out = shape.output[0]
        prefix = f"/per_layer_cache/shape{k}"
        nodes = [
            helper.make_node("Shape", [values], [f"{prefix}/values"]),
            helper.make_node("Gather", [f"{prefix}/values", f"{prefix}/order"], [f"{prefix}/picked"], axis=0),
            helper.make_node("Split", [f"{prefix}/picked", f"{prefix}/split"],
                             [f"{prefix}/lead", f"{prefix}/tail"], axis=0),
            helper.make_node("Concat", [f"{prefix}/lead", f"{prefix}/layers", f"{prefix}/tail"], [out], axis=0),
        ]
        graph.initializer.extend([
            helper.make_tensor(f"{prefix}/order", TensorProto.INT64, [4], [2, 0, 1, 3]),
            helper.make_tensor(f"{prefix}/split", TensorProto.INT64, [2], [2, 2]),
            helper.make_tensor(f"{prefix}/layers", TensorProto.INT64, [1], [layers2]),
        ])
        position = list(graph.node).index(shape)
        graph.node.remove(shape)
        for offset, new in enumerate(nodes):
            graph.node.insert(position + offset, new)
    graph.input.remove(cache)
    return len(replaced)
