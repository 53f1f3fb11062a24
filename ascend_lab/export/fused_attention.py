"""The CPU derived kv_cache graph's attention: each decoder layer's attention as one com.microsoft
``GroupQueryAttention`` that reads and writes the layer's cache in place.

The contract's graph (:mod:`ascend_lab.graph_contract`, what ATC compiles) computes attention from plain ONNX ops:
rotary embedding as slices, negations and concatenations, scores over every allocated cache slot and over the new
tokens masked with ``Where``, two value products, and the new keys and values out as ``present_key_values`` for the
runtime to copy into the cache. On a CPU each of those ~50 small kernels per layer costs a thread-pool round trip
per decode step, and the scores cover the whole allocated capacity whatever the context.

:func:`fuse_attention` rewrites a kv_cache graph (for onnxruntime only, as a derived graph) the way
onnxruntime-genai's model builder writes its Qwen2 CPU model (microsoft/onnxruntime-genai,
src/python/py/models/builder.py): the layer's q, k and v projections become one matmul over their concatenated
weights (float ``MatMul`` or 4-/8-bit ``MatMulNBits`` alike), whose output goes into ``GroupQueryAttention`` with
the rotary embedding inside (``do_rotary``) and past and present sharing one buffer; its output feeds the output
projection, and whatever only the old attention read is removed.

The rewritten graph takes ``input_ids``, ``position_ids``, the ops' lengths and pad bias in place of
``past_length`` and ``pad_lengths`` (:func:`~ascend_lab.graph_contract.fused_attention_feeds` makes them from those
two on the host: a dozen small ops per step fewer), and per layer j (2·layer: keys, 2·layer + 1: values)
:data:`~ascend_lab.graph_contract.PAST_LAYER_INPUT` ``.format(j)`` [batch, kv_heads, capacity, head_dim], and outputs
``logits`` (written by the LM head's matmul itself), ``next_token`` and
:data:`~ascend_lab.graph_contract.PRESENT_LAYER_OUTPUT` ``.format(j)`` of the same shape. The runtime binds each
pair to one buffer: the op writes the new tokens' slots ``[past_length, past_length + seq)`` and nothing else
touches the cache.

Positions and pads are the contract's: a row's token in slot s has rotary position ``position_ids`` (s − the row's
left pads), and pad slots are never attended to (an additive ``attention_bias`` of
:data:`~ascend_lab.graph_contract.MASK_VALUE` on them; the op masks causally by slot itself). The op is given
``query_seqlens`` (every row's new tokens all count): without it a first prompt rotates every row from the first
element of ``position_ids``, which is wrong for left-padded rows. The ``cos_cache``/``sin_cache`` tables are the
export's own rotary computation (its ``cos``/``sin`` nodes, run once for positions 0 … N − 1,
N = :func:`rotary_slots`, in the graph's metadata as :data:`~ascend_lab.graph_contract.MAX_CACHE_SLOTS_KEY`), so a
cache of more than N slots is refused by the runtime.
"""

from __future__ import annotations

import re

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.errors import AscendLabError

MS_DOMAIN = "com.microsoft"
# The rotary tables cover at least this many positions (the model's max_position_embeddings where larger).
MIN_ROTARY_SLOTS = 32768
PREFIX = "/fused_attention"


def rotary_slots(max_position_embeddings: int | None) -> int:
    """N: the positions the rotary tables cover, and the most cache slots the fused graph can run."""
    return max(MIN_ROTARY_SLOTS, int(max_position_embeddings or 0))


class _Graph:
    """Producers, consumers and constants of one graph's tensors."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {i.name: i for i in graph.initializer}
        self.constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and len(n.attribute) == 1
                          and n.attribute[0].name == "value"}

    def stored(self, name: str) -> str | None:
        """``name`` if it is a stored tensor (an initializer or a ``Constant``'s output), or the stored tensor an
        ``Identity`` passes on (the exporter shares equal tensors that way); else None."""
        while name not in self.initializers and name not in self.constants:
            node = self.producer.get(name)
            if node is None or node.op_type != "Identity":
                return None
            name = node.input[0]
        return name

    def array(self, name: str) -> np.ndarray:
        """The value of a stored tensor (see :meth:`stored`)."""
        from onnx import numpy_helper

        name = self.stored(name)
        stored = self.initializers.get(name)
        return numpy_helper.to_array(stored if stored is not None else self.constants[name].attribute[0].t)

    def weight_node(self, layer: int, projection: str):
        """The node that multiplies by ``layers.<layer>.<projection>``'s weight (``MatMul``, ``MatMulNBits``)."""
        pattern = re.compile(rf"(^|\.)layers\.{layer}\.{re.escape(projection)}\.weight")
        found = [n for n in self.graph.node if n.op_type in ("MatMul", "MatMulNBits") and len(n.input) > 1
                 and pattern.search(n.input[1])]
        if len(found) != 1 or not all(self.stored(i) for i in found[0].input[1:] if i):
            raise AscendLabError(f"kv_cache graph: expected one matmul by a stored layers.{layer}.{projection}.weight, "
                                 f"found {len(found)}; the attention fusion does not know this graph")
        return found[0]

    def bias(self, matmul) -> str | None:
        """The name of the stored bias an ``Add`` adds right after ``matmul``, or None."""
        readers = self.consumers.get(matmul.output[0], [])
        if len(readers) == 1 and readers[0].op_type == "Add":
            other = [i for i in readers[0].input if i != matmul.output[0]]
            if len(other) == 1 and self.stored(other[0]):
                return other[0]
        return None


def rotary_tables(model, slots: int, head_dim: int, elem: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos_cache``, ``sin_cache`` [slots, head_dim / 2] for positions 0 … slots − 1, computed by the graph's own
    rotary nodes (the ancestors of its ``Cos`` and ``Sin`` down to the tensors every layer multiplies by) in
    onnxruntime; ``elem``: their ONNX element type (the model's float type)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = _Graph(model.graph)
    ends = []
    for op in ("Cos", "Sin"):
        nodes = [n for n in model.graph.node if n.op_type == op]
        if len(nodes) != 1:
            raise AscendLabError(f"kv_cache graph: expected one {op} node (the rotary table), found {len(nodes)}")
        name = nodes[0].output[0]
        while len(g.consumers.get(name, [])) == 1 and g.consumers[name][0].op_type in ("Mul", "Cast", "Unsqueeze"):
            name = g.consumers[name][0].output[0]
        ends.append(name)
    needed, stack = {}, list(ends)
    while stack:
        node = g.producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed[id(node)] = node
            stack.extend(node.input)
    nodes = [n for n in model.graph.node if id(n) in needed]
    reads = {i for n in nodes for i in n.input} - {o for n in nodes for o in n.output} - {""}
    if reads - set(g.initializers) - {gc.POSITION_IDS}:
        raise AscendLabError(f"kv_cache graph: its rotary table reads {sorted(reads)}, not only {gc.POSITION_IDS}")
    sub = helper.make_model(
        helper.make_graph(nodes, "rotary",
                          [helper.make_tensor_value_info(gc.POSITION_IDS, TensorProto.INT64, [1, None])],
                          [helper.make_tensor_value_info(e, elem, None) for e in ends],
                          [g.initializers[i] for i in reads if i in g.initializers]),
        opset_imports=list(model.opset_import), ir_version=model.ir_version)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
    tables = []
    for table in session.run(None, {gc.POSITION_IDS: np.arange(slots, dtype=np.int64)[None, :]}):
        table = np.asarray(table).reshape(slots, -1)
        half = head_dim // 2
        if table.shape[1] != head_dim or not np.array_equal(table[:, :half], table[:, half:]):
            raise AscendLabError("kv_cache graph: its rotary table is not [f, f] over head_dim (the rotate-half "
                                 "layout GroupQueryAttention implements)")
        tables.append(np.ascontiguousarray(table[:, :half]))
    return tables[0], tables[1]


def pack_projections(g: _Graph, matmuls: list, biases: list, name: str) -> tuple[list, list, str]:
    """One matmul over the concatenated weights of ``matmuls`` (all reading the same input) and their concatenated
    ``biases`` (stored tensors' names, or None) where they have any that is not zero: MatMulNBits' own bias input, or
    one ``Add`` after a float MatMul: (new nodes, new initializers, the packed output)."""
    from onnx import helper, numpy_helper

    first = matmuls[0]
    if len({m.op_type for m in matmuls}) != 1 or len({m.input[0] for m in matmuls}) != 1:
        raise AscendLabError("kv_cache graph: the q, k and v projections differ in kind or input")

    array = g.array
    inits: list = []
    if first.op_type == "MatMul":  # weights [in, out]: concatenated along the outputs
        inits.append(numpy_helper.from_array(np.concatenate([array(m.input[1]) for m in matmuls], axis=1),
                                             f"{name}.weight"))
        node = helper.make_node("MatMul", [first.input[0], inits[-1].name], [f"{name}/output"], name=name)
    else:  # MatMulNBits: B [N, blocks, blob], scales and zero points per output row: concatenated along N
        attrs = [{a.name: helper.get_attribute_value(a) for a in m.attribute} for m in matmuls]
        if any({k: v for k, v in a.items() if k != "N"} != {k: v for k, v in attrs[0].items() if k != "N"}
               for a in attrs) or any(len(m.input) != len(first.input) for m in matmuls):
            raise AscendLabError("kv_cache graph: the q, k and v MatMulNBits differ in their quantisation")
        if any(first.input[4:]):  # g_idx and bias are not laid out per output row
            raise AscendLabError("kv_cache graph: a MatMulNBits with g_idx or bias inputs cannot be packed")
        inputs = [first.input[0]]
        for k, part in enumerate(first.input[1:], start=1):
            if not part:
                inputs.append("")
                continue
            parts = [array(m.input[k]) for m in matmuls]
            rows = [a.reshape(n["N"], -1) for a, n in zip(parts, attrs)]
            packed = np.concatenate(rows, axis=0)
            packed = packed.reshape(-1, *parts[0].shape[1:]) if parts[0].ndim > 1 else packed.reshape(-1)
            inits.append(numpy_helper.from_array(packed, f"{name}.input{k}"))
            inputs.append(inits[-1].name)
        node = helper.make_node("MatMulNBits", inputs, [f"{name}/output"], name=name, domain=first.domain,
                                **{**attrs[0], "N": sum(a["N"] for a in attrs)})
    nodes = [node]
    if any(b is not None for b in biases):
        if not all(b is not None for b in biases):
            raise AscendLabError("kv_cache graph: some of the q, k and v projections have a bias and some not")
        bias = np.concatenate([array(b) for b in biases])
        # A bias of zeros adds nothing but a node per layer (onnxruntime-genai's builder drops it too); MatMulNBits
        # adds a bias itself (its optional input 5), a float MatMul needs the Add.
        if bias.any():
            inits.append(numpy_helper.from_array(bias, f"{name}.bias"))
            if node.op_type == "MatMulNBits":
                node.input.extend([""] * (5 - len(node.input)) + [inits[-1].name])
            else:
                nodes.append(helper.make_node("Add", [node.output[0], inits[-1].name], [f"{name}/biased"],
                                              name=f"{name}/Add"))
    return nodes, inits, nodes[-1].output[0]


def fuse_attention(model, num_heads: int, max_position_embeddings: int | None = None) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto`` of the kv_cache graph) in place as the module docstring says;
    returns how many layers it fused."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    cache = next((i for i in graph.input if i.name == gc.PAST_KEY_VALUES), None)
    if cache is None:
        raise AscendLabError(f"not a kv_cache graph: no {gc.PAST_KEY_VALUES} input")
    capacity, batch, layers2, kv_heads, head_dim = (d.dim_param or d.dim_value
                                                    for d in cache.type.tensor_type.shape.dim)
    if not all(isinstance(v, int) and v > 0 for v in (layers2, kv_heads, head_dim)):
        raise AscendLabError(f"kv_cache graph: {gc.PAST_KEY_VALUES} [capacity, batch, 2·layers, kv_heads, dim] needs "
                             "fixed layer, head and dim sizes")
    elem = cache.type.tensor_type.elem_type
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    slots = rotary_slots(max_position_embeddings)
    cos, sin = rotary_tables(model, slots, head_dim, elem)
    g = _Graph(graph)

    def name(suffix: str) -> str:
        return f"{PREFIX}/{suffix}"

    # What every layer's op reads besides its own tensors: inputs the runtime makes (gc.fused_attention_feeds).
    lengths = [helper.make_tensor_value_info(gc.SEQLENS_K, TensorProto.INT32, ["batch"]),
               helper.make_tensor_value_info(gc.TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, []),
               helper.make_tensor_value_info(gc.QUERY_SEQLENS, TensorProto.INT32, ["batch"]),
               helper.make_tensor_value_info(gc.ATTENTION_BIAS, elem, ["batch", 1, "seq", "total"])]
    graph.initializer.extend([numpy_helper.from_array(cos.astype(dtype), name("cos_cache")),
                              numpy_helper.from_array(sin.astype(dtype), name("sin_cache"))])
    cache_shape = [batch, kv_heads, capacity, head_dim]
    inputs, outputs, placed = [], [], []
    for i in range(layers2 // 2):
        projections = [g.weight_node(i, f"self_attn.{p}_proj") for p in "qkv"]
        o_proj = g.weight_node(i, "self_attn.o_proj")
        nodes, inits, qkv = pack_projections(g, projections, [g.bias(m) for m in projections],
                                             name(f"layer{i}/qkv_proj"))
        graph.initializer.extend(inits)
        keys, values = gc.PAST_LAYER_INPUT.format(2 * i), gc.PAST_LAYER_INPUT.format(2 * i + 1)
        present = [gc.PRESENT_LAYER_OUTPUT.format(2 * i), gc.PRESENT_LAYER_OUTPUT.format(2 * i + 1)]
        out = name(f"layer{i}/attention")
        nodes.append(helper.make_node(
            "GroupQueryAttention",
            [qkv, "", "", keys, values, gc.SEQLENS_K, gc.TOTAL_SEQUENCE_LENGTH, name("cos_cache"),
             name("sin_cache"), gc.POSITION_IDS, gc.ATTENTION_BIAS, "", "", "", "", "", gc.QUERY_SEQLENS],
            [out, *present], name=name(f"layer{i}/GroupQueryAttention"), domain=MS_DOMAIN,
            num_heads=num_heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0))
        o_proj.input[0] = out
        placed.append((o_proj, nodes))
        inputs += [helper.make_tensor_value_info(n, elem, cache_shape) for n in (keys, values)]
        outputs += [helper.make_tensor_value_info(n, elem, cache_shape) for n in present]
    # Topological order: a layer's nodes go before its output projection.
    for o_proj, nodes in placed:
        at = list(graph.node).index(o_proj)
        for offset, node in enumerate(nodes):
            graph.node.insert(at + offset, node)
    graph.input.remove(cache)
    graph.input.extend(lengths + inputs)
    logits_from_the_matmul(graph)
    graph.output.remove(next(o for o in graph.output if o.name == gc.PRESENT_KEY_VALUES))
    graph.output.extend(outputs)
    prune(graph)
    if any(gc.PAST_KEY_VALUES in n.input for n in graph.node):
        raise AscendLabError(f"kv_cache graph: something besides the attention reads {gc.PAST_KEY_VALUES}")
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    props = {p.key: p.value for p in model.metadata_props}
    helper.set_model_props(model, {**props, gc.MAX_CACHE_SLOTS_KEY: str(slots)})
    return layers2 // 2


def logits_from_the_matmul(graph) -> None:
    """Let the LM head's matmul write ``logits`` [batch, vocab] itself: the export reshapes the matmul's [batch, 1,
    vocab] into it, a copy of the whole vocabulary's row every step; reshaping the matmul's [batch, 1, hidden] input
    instead copies a hidden state. A graph whose logits come otherwise is left as it is."""
    from onnx import helper, numpy_helper

    g = _Graph(graph)
    reshape = g.producer.get(gc.LOGITS)
    head = g.producer.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if head is None or head.op_type not in ("MatMul", "MatMulNBits") or len(g.consumers[head.output[0]]) != 1:
        return
    # [batch, 1, hidden] → [batch, hidden] (Reshape's 0 keeps the batch).
    shape = numpy_helper.from_array(np.array([0, -1], dtype=np.int64), f"{PREFIX}/lm_head_input_shape")
    graph.initializer.append(shape)
    flatten = helper.make_node("Reshape", [head.input[0], shape.name], [f"{PREFIX}/lm_head_input"])
    graph.node.insert(list(graph.node).index(head), flatten)
    head.input[0] = flatten.output[0]
    head.output[0] = gc.LOGITS
    graph.node.remove(reshape)


def prune(graph) -> None:
    """Drop the nodes no graph output needs, then the initializers and inputs nothing reads."""
    producer = {out: node for node in graph.node for out in node.output}
    needed, stack, keep = set(), [o.name for o in graph.output], set()
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = producer.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(i for i in node.input if i)
    alive = [n for n in graph.node if id(n) in keep]
    del graph.node[:]
    graph.node.extend(alive)
    for init in [i for i in graph.initializer if i.name not in needed]:
        graph.initializer.remove(init)
    for value in [i for i in graph.input if i.name not in needed]:
        graph.input.remove(value)
