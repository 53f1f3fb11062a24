"""Weight quantisation of an exported graph (``export.quantize=int8|int4``) with onnxruntime's tools.

int4 (:func:`quantize_int4`): ``MatMulNBits`` with 4-bit weights, symmetric, one scale per block of
``export.int4_block_size`` input channels, at ``export.int4_accuracy_level`` (the scheme of
onnxruntime-genai's model builder ``-p int4``: microsoft/onnxruntime-genai, src/python/py/models/builder.py).

int8 (:func:`quantize_int8`) has two methods, both quantising exactly the weight matmuls (``MatMul`` whose second input is a
constant weight: the projections, the MLP and the LM head); activations-by-activations matmuls
(attention scores, attention × values) stay float, and so do the embedding lookups:

- ``matmul_nbits`` (default): ``MatMulNBits`` with 8-bit weights, symmetric, one scale per block
  of :data:`BLOCK_SIZE` input channels (``onnxruntime.quantization.matmul_nbits_quantizer``), at
  ``accuracy_level`` 4 (int8 × int8 products with int32 sums: the VNNI/AVX-512 kernels). One
  fused op per weight; finer scales than per-tensor or per-channel.
- ``dynamic``: ``quantize_dynamic`` → ``DynamicQuantizeLinear`` + ``MatMulInteger`` (fused by the
  session into ``DynamicQuantizeMatMul``), per-output-channel int8 weights.

The exporter without constant folding feeds each ``MatMul`` a ``Transpose`` of the weight, which
neither quantiser recognises as a weight: :func:`fold_weight_transposes` stores the transposed
weights as initializers first (an LM head tied to the embedding becomes its own initializer; the
embedding stays for the ``Gather``).
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ascend_lab.errors import AscendLabError

log = logging.getLogger(__name__)

INT8_METHODS = ("matmul_nbits", "dynamic")
DEFAULT_INT8_METHOD = "matmul_nbits"
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations (per block) × int8 weights
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def fold_weight_transposes(model) -> int:
    """Replace ``MatMul(x, Transpose(W))`` of a 2-D initializer ``W`` by ``MatMul(x, W')`` with
    ``W' = W.T`` stored; returns how many matmuls were rewritten."""
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded: dict[str, str] = {}  # Transpose output → new initializer name
    rewritten = 0
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2:
            continue
        source = producers.get(node.input[1])
        if source is None or source.op_type != "Transpose" or source.input[0] not in initializers:
            continue
        weight = initializers[source.input[0]]
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), None)
        if len(weight.dims) != 2 or perm not in (None, [1, 0]):
            continue
        if source.output[0] not in folded:
            name = f"{weight.name}.T"
            array = np.ascontiguousarray(numpy_helper.to_array(weight).T)
            graph.initializer.append(numpy_helper.from_array(array, name))
            folded[source.output[0]] = name
        node.input[1] = folded[source.output[0]]
        rewritten += 1
    # Drop the Transposes nothing reads any more, then initializers nothing reads.
    still_read = {name for node in graph.node for name in node.input if node.op_type != "Transpose"
                  or node.output[0] not in folded}
    dead = [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in folded
            and n.output[0] not in still_read]
    for node in dead:
        graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)
    return rewritten


def weight_matmuls(model) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant (a weight)."""
    initializers = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in initializers]


def quantize_int8(path: Path, external: bool, method: str = DEFAULT_INT8_METHOD,
                  accuracy_level: int = ACCURACY_LEVEL) -> Path:
    """Quantise the graph at ``path`` (``model.onnx`` [+ ``model.onnx.data``]) in place; returns ``path``.

    ``external``: weights in one side file (:data:`DATA_FILE`), as the float graph had them.
    """
    if method not in INT8_METHODS:
        raise AscendLabError(f"unknown int8 quantisation method {method!r}; choose one of {', '.join(INT8_METHODS)}")

    def quantize(model, nodes, work: Path) -> None:
        if method == "matmul_nbits":
            _matmul_nbits(model, nodes, work / MODEL_FILE, external, 8, BLOCK_SIZE, accuracy_level)
        else:
            _dynamic(model, nodes, work, external)

    return _quantize_in_place(Path(path), f"int8 ({method})", quantize)


def quantize_int4(path: Path, external: bool, block_size: int = BLOCK_SIZE, accuracy_level: int = ACCURACY_LEVEL) -> Path:
    """4-bit ``MatMulNBits`` weights (symmetric, one scale per ``block_size`` input channels) in place at ``path``;
    the embedding table too (``GatherBlockQuantized``, blocks along the hidden axis), as onnxruntime-genai's int4
    does: in float it would be the largest tensor left (a 151,936-token vocabulary × 896 is 0.54 GB)."""
    return _quantize_in_place(
        Path(path), f"int4 (block {block_size}, accuracy_level {accuracy_level})",
        lambda model, nodes, work: _matmul_nbits(model, nodes, work / MODEL_FILE, external, 4, block_size,
                                                 accuracy_level))


def _quantize_in_place(path: Path, what: str, quantize) -> Path:
    """Fold the weight transposes of the graph at ``path``, ``quantize(model, weight_nodes, work_dir)`` into a
    work folder, then replace the graph's files by the quantised ones."""
    import onnx

    model = onnx.load(str(path))  # external data loaded too
    folded = fold_weight_transposes(model)
    nodes = weight_matmuls(model)
    if not nodes:
        raise AscendLabError(f"export.quantize: {path} has no MatMul with a constant weight to quantise")
    log.info("%s: %d weight matmuls (%d weight transposes folded)", what, len(nodes), folded)
    work = path.parent / "quantized"
    work.mkdir()
    try:
        with _quiet_quantizers():
            quantize(model, nodes, work)
        del model
        for old in path.parent.iterdir():
            if old.is_file():
                old.unlink()
        for new in work.iterdir():
            if new.is_file() and new.name in (MODEL_FILE, DATA_FILE):
                new.rename(path.parent / new.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


@contextmanager
def _quiet_quantizers() -> Iterator[None]:
    """onnxruntime's quantisers log a line per node at INFO and advice on the root logger, and warn about the
    all-zero blocks they handle."""
    names = ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization", "root")
    loggers = [logging.getLogger(n) if n != "root" else logging.getLogger() for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.ERROR))
    try:
        with warnings.catch_warnings():
            # An all-zero block divides 0 by a 0 scale before np.where picks 0 for it.
            warnings.filterwarnings("ignore", "invalid value encountered in divide", RuntimeWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def embedding_gathers(model) -> list[str]:
    """Names of the Gather nodes that look rows up in a constant 2-D table (the token embedding)."""
    tables = {init.name for init in model.graph.initializer if len(init.dims) == 2}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and n.input[0] in tables and n.name]


def _matmul_nbits(model, nodes: list[str], out: Path, external: bool, bits: int, block_size: int,
                  accuracy_level: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # GatherBlockQuantized takes 4-bit tables only.
    gathers = embedding_gathers(model) if bits == 4 else []
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                     accuracy_level=accuracy_level, nodes_to_include=nodes + gathers,
                                     op_types_to_quantize=("MatMul", "Gather") if gathers else ("MatMul",))
    opsets = {o.domain: o.version for o in model.opset_import}
    quantizer.process()
    quantized = quantizer.model.model
    # Quantising a Gather raises the default domain's opset (for its int4 tensors), which would change what the
    # graph's own ops mean (ReduceMean's axes become an input at 18): the int4 type needs the IR version, not the
    # opset, so the graph keeps the opset it was exported at.
    for opset in quantized.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.domain in opsets:
            opset.version = opsets[opset.domain]
    _save(quantized, out, external)


def _dynamic(model, nodes: list[str], work: Path, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic reads a file: stage the folded float graph first.
    staged = work / "folded.onnx"
    _save(model, staged, external, location="folded.onnx.data")
    # Per-tensor weight scales: with per_channel=True quantize_dynamic scales MatMul weights [K, N] along
    # the reduction axis K, which MatMulInteger cannot undo after summing (on tiny_qwen the logits' mean
    # error is 8.3 % of their spread that way, 1.6 % per-tensor).
    quantize_dynamic(str(staged), str(work / MODEL_FILE), weight_type=QuantType.QInt8, per_channel=False,
                     nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"],
                     use_external_data_format=external,
                     extra_options={"MatMulConstBOnly": True})
    if external:
        # Rewrite into one fresh DATA_FILE: quantize_dynamic picks its own side-file name, and
        # onnx appends to an existing one rather than replacing it.
        import onnx

        quantized = onnx.load(str(work / MODEL_FILE))
        for path in work.iterdir():
            path.unlink()
        _save(quantized, work / MODEL_FILE, True)


def _save(model, out: Path, external: bool, location: str = DATA_FILE) -> None:
    import onnx

    if external:
        onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=location, size_threshold=1024)
    else:
        onnx.save_model(model, str(out))
