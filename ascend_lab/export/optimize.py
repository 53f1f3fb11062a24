"""Graphs derived from a cached export, cached beside it: transformer-optimised, int8-quantised.

A derived graph lives in ``<entry>~<variant>/`` next to the export cache entry it came from
(``model.onnx`` [+ ``model.onnx.data``] and a ``meta.json`` naming the source's sha256), an entry of
the one content-addressed cache (:mod:`ascend_lab.artifact_cache`), so parallel jobs derive it once
and a killed job leaves nothing half-written.

:func:`transformer_optimize` runs onnxruntime's transformer optimizer
(``onnxruntime.transformers.optimizer.optimize_model``). On this project's Qwen2 ``kv_cache``
export it fuses the RMSNorms (``SimplifiedLayerNormalization``) and each residual add with the
following RMSNorm (``SkipSimplifiedLayerNormalization``); it does not recognise the attention
(the exported graph builds its own mask and reads the KV heads grouped for GQA). So a kv_cache graph's attention is
then fused here (:func:`ascend_lab.export.fused_attention.fuse_attention`): per layer one packed q|k|v matmul and
one ``GroupQueryAttention`` that reads and writes the layer's cache in place, as onnxruntime-genai builds its
models. The session's own level-``all`` optimisations add ``QuickGelu`` (SiLU) on top. A rank-4 cache
(``export.cache_layout=rank4``, a layout for rank-limited CANN releases) keeps the contract's attention and input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ascend_lab import artifact_cache
from ascend_lab import graph_contract as gc
from ascend_lab.export.fused_attention import fuse_attention

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# Bump when a derivation's code changes what it produces: entries of another format are rebuilt.
# 2: int8 dynamic quantisation per tensor (export/quantize.py); 3: ortopt splits the kv_cache graph's cache per layer;
# 4: ortopt fuses the kv_cache graph's attention (GroupQueryAttention, cache written in place); 5: the packed q|k|v
# bias inside MatMulNBits, none where it is all zeros; 6: the attention's lengths and pad bias as inputs, logits
# straight from the LM head's matmul
DERIVED_FORMAT = 6


def derived_graph(source_onnx: Path, variant: str, build: Callable[[Path, Path], None],
                  source_sha256: str | None = None) -> Path:
    """``<source entry>~<variant>/model.onnx``, built once by ``build(source_onnx, out_onnx)``."""
    source_onnx = Path(source_onnx)
    folder = source_onnx.parent.parent / f"{source_onnx.parent.name}~{variant}"

    def make(tmp: Path) -> dict:
        started = time.perf_counter()
        build(source_onnx, tmp / MODEL_FILE)
        files = [tmp / MODEL_FILE] + sorted(p for p in tmp.iterdir() if p.name != MODEL_FILE)
        log.info("derived graph %s built", folder.name)
        return {"onnx_file": MODEL_FILE, "files": [p.name for p in files], "variant": variant,
                "format": DERIVED_FORMAT, "source": str(source_onnx), "source_sha256": source_sha256,
                "onnx_size_mb": sum(p.stat().st_size for p in files) / 1e6,
                "build_seconds": time.perf_counter() - started}

    # An entry an older derivation wrote (another format) is rebuilt, not reused.
    return artifact_cache.ensure(folder, make, required={"format": DERIVED_FORMAT}).path(MODEL_FILE)


def transformer_optimize(source: Path, out: Path, num_heads: int, hidden_size: int,
                         max_position_embeddings: int | None = None) -> dict[str, int]:
    """Write the transformer-optimised form of ``source`` to ``out``; returns the fused-op counts.
    ``max_position_embeddings``: the model's, for the fused attention's rotary tables."""
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    external = (source.parent / DATA_FILE).exists()
    options = FusionOptions("gpt2")
    # opt_level 0: only the Python fusions; the session applies onnxruntime's own at load time
    # (saving those would bake in this machine's kernels, e.g. NCHWc layouts).
    model = optimize_model(str(source), model_type="gpt2", num_heads=num_heads, hidden_size=hidden_size,
                           optimization_options=options, opt_level=0, only_onnxruntime=False)
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    log.info("transformer optimizer fused: %s", fused or "nothing")
    cache = next((i for i in model.model.graph.input if i.name == gc.PAST_KEY_VALUES), None)
    if cache is not None and len(cache.type.tensor_type.shape.dim) == 5:
        fused["GroupQueryAttention"] = fuse_attention(model.model, num_heads, max_position_embeddings)
    if external:
        onnx.save_model(model.model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(model.model, str(out))
    return fused


def optimized_graph(exported, num_heads: int, hidden_size: int) -> Path:
    """The transformer-optimised graph of an :class:`~ascend_lab.export.ExportedModel`, cached beside it."""
    positions = exported.extra.get("key_material", {}).get("model", {}).get("max_position_embeddings")
    return derived_graph(exported.onnx_path, "ortopt",
                         lambda src, out: transformer_optimize(src, out, num_heads, hidden_size, positions),
                         exported.sha256)


def int8_graph(exported, method: str | None = None) -> Path:
    """The int8 form (:mod:`ascend_lab.export.quantize`) of a float export, cached beside it."""
    import shutil

    from ascend_lab.export.quantize import DEFAULT_INT8_METHOD, quantize_int8

    method = method or DEFAULT_INT8_METHOD

    def build(src: Path, out: Path) -> None:
        for path in [src, *sorted(p for p in src.parent.iterdir() if p.name == DATA_FILE)]:
            shutil.copy(path, out.parent / path.name)
        quantize_int8(out, (out.parent / DATA_FILE).exists(), method)

    return derived_graph(exported.onnx_path, f"int8-{method}", build, exported.sha256)
