"""ONNX export through the content-addressed cache: :func:`ensure_exported` is what every task calls.

A cache hit reuses the stored graph and its recorded parity figures (still held against the
current ``export.parity_tol``); a miss loads the model, exports, checks, runs the parity check
and publishes the entry (:mod:`ascend_lab.artifact_cache`). Either way the run gets the same metrics
and tags (``onnx_sha256``, ``onnx_path``, ``export_cache_key``), so any later run names the exact
graph it used.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ascend_lab import artifact_cache
from ascend_lab.errors import AscendLabError
from ascend_lab.export.keys import cache_key, entry_dir, key_material
from ascend_lab.export.onnx_export import MODEL_FILE
from ascend_lab.graph_contract import GraphContract, ModelDims
from ascend_lab.models import with_launch_paths

log = logging.getLogger(__name__)

# Weight quantisation moves logits much more than float rounding does; 4-bit more than 8-bit.
QUANTIZED_DEFAULT_TOLERANCE = {"int8": 1.0, "int4": 4.0}
DUMMY_PROMPT = "你好,昇腾!"  # the walkthrough's dummy input
DUMMY_BATCH = 3  # not 1 (the tracer may specialise size-1 dims) and unlike the parity batch
DUMMY_SPARE_SLOTS = 7  # kv_cache: cache capacity = prompt + this, unlike every other dim


@dataclass
class ExportedModel:
    onnx_path: Path
    sha256: str
    graph: str
    dtype: str
    dims: ModelDims
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict
    cache_key: str
    cache_hit: bool
    extra: dict = field(default_factory=dict, repr=False)  # meta.json: parity figures, size, opset
    layer_outputs: bool = False  # the kv_cache graph's debug variant (export.layer_outputs)
    cache_layout: str = "rank5"  # the kv_cache graph's cache layout (export.cache_layout, resolved)

    @property
    def contract(self) -> GraphContract:
        return GraphContract(self.graph, self.dims, self.dtype, self.layer_outputs, self.cache_layout)


def parity_tolerance(cfg) -> tuple[float, str]:
    """(tolerance, where it came from) for ``export.parity_tol``."""
    from ascend_lab.export.parity import default_tolerance

    if cfg.export.parity_tol is not None:
        return cfg.export.parity_tol, "export.parity_tol"
    if cfg.export.quantize in QUANTIZED_DEFAULT_TOLERANCE:
        return (QUANTIZED_DEFAULT_TOLERANCE[cfg.export.quantize],
                f"default for {cfg.export.quantize}-quantised graphs")
    return default_tolerance(cfg.model.dtype), f"default for {cfg.model.dtype}"


def ensure_exported(cfg, ctx, dtype: str | None = None) -> ExportedModel:
    """The ONNX graph for ``cfg.model`` + ``cfg.export``: from the cache, else exported now.

    ``dtype`` overrides ``model.dtype`` (the compile exports in ``atc.export_dtype``).
    """
    if dtype is not None and dtype != cfg.model.dtype:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))
    if cfg.export.quantize != "none" and cfg.model.dtype != "float32":
        raise AscendLabError(f"export.quantize={cfg.export.quantize} quantises float32 weights; set model.dtype=float32 "
                             f"(got model.dtype={cfg.model.dtype}).")
    start = time.perf_counter()
    cfg = dataclasses.replace(cfg, model=with_launch_paths(cfg.model, ctx.path))
    from ascend_lab.cann import toolkit
    from ascend_lab.export import cache_layout

    if cfg.export.graph == "kv_cache":  # the layout this CANN takes, resolved before the cache key
        layout, why = cache_layout.resolve(cfg.export.cache_layout, toolkit.toolkit_version(cfg.atc.toolkit_home))
        cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, cache_layout=layout))
        ctx.tracker.set_tags({"export.cache_layout": f"{layout} ({why})"})
    material = key_material(cfg.model, cfg.export, cfg.seed)
    key = cache_key(material)
    folder = entry_dir(ctx.path(cfg.export.cache_dir), cfg.model.name, cfg.export.graph, cfg.model.dtype, key)
    tol, tol_source = parity_tolerance(cfg)

    def build(tmp: Path) -> dict:
        meta = _export_into(tmp, cfg, key, material)
        meta["export_seconds"] = time.perf_counter() - start
        _enforce_tolerance(ctx.tracker, meta, tol, tol_source)
        return meta

    entry = artifact_cache.ensure(folder, build)
    if entry.damaged:
        ctx.tracker.set_tags({"export_cache_damaged": entry.damaged})
    seconds = time.perf_counter() - start
    exported = _from_meta(entry.folder, entry.meta, entry.hit)
    if entry.hit:
        log.info("export cache hit: %s", entry.folder)
        _enforce_tolerance(ctx.tracker, entry.meta, tol, tol_source)
    _log_run(ctx.tracker, exported, entry.meta, seconds, cfg.export.artifact_max_mb, tol)
    return exported


def _export_into(tmp: Path, cfg, key: str, material: dict) -> dict:
    """Export, check and parity-test into the staging folder; returns the meta.json content."""
    from ascend_lab.export import onnx_export, parity
    from ascend_lab.graphs import wrapper_for
    from ascend_lab.models import load_model, torch_dtype

    ecfg = cfg.export
    log.info("exporting %s (%s graph) to ONNX", cfg.model.name, ecfg.graph)
    stages: dict[str, float] = {}
    lap = _lap_timer()
    loaded = load_model(cfg.model, cfg.seed)
    stages["load_model"] = lap()
    model, config = loaded.model, loaded.config
    wrapper = wrapper_for(ecfg.graph, model, layer_outputs=ecfg.layer_outputs,
                          fuse_projections=ecfg.fuse_projections, cache_layout=ecfg.cache_layout)
    contract = GraphContract(ecfg.graph, ModelDims.of(config), cfg.model.dtype, ecfg.layer_outputs, ecfg.cache_layout)
    input_names, output_names = contract.input_names(), contract.output_names()
    axes = contract.dynamic_axes()
    dtype = torch_dtype(cfg.model.dtype)

    # PyTorch's side of the parity check first, so the model can be freed before ONNX Runtime loads.
    cases = parity.build_cases(wrapper, contract, ecfg.parity_batch_size, ecfg.parity_seq_len, dtype, cfg.seed)
    stages["torch_reference"] = lap()
    args = _dummy_inputs(loaded.tokenizer, contract, dtype)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = onnx_export.wants_external_data(ecfg.external_data, param_bytes)
    raw = onnx_export.export_raw(wrapper, args, tmp, input_names=input_names, output_names=output_names,
                                 axes=axes, cfg=ecfg, external_data=external)
    stages["torch_onnx_export"] = lap()
    del wrapper, model, loaded, args
    gc.collect()
    path = onnx_export.finalize(raw, tmp, input_names, output_names, axes if ecfg.dynamic_axes else {}, external)
    stages["finalize"] = lap()
    onnx_export.check_model(path)
    stages["onnx_checker"] = lap()
    if ecfg.quantize == "int8":
        from ascend_lab.export.quantize import quantize_int8

        path = quantize_int8(path, external)
        stages["quantize"] = lap()
    elif ecfg.quantize == "int4":
        from ascend_lab.export.quantize import quantize_int4

        path = quantize_int4(path, external, ecfg.int4_block_size, ecfg.int4_accuracy_level)
        stages["quantize"] = lap()
    opset = onnx_export.graph_opset(path)
    if opset != ecfg.opset:
        # The dynamo exporter builds at its own opset and only tries to convert down.
        log.warning("the %s exporter produced opset %d, not export.opset=%d", ecfg.exporter, opset, ecfg.opset)
    result = parity.compare(cases, path)
    stages["parity"] = lap()
    files = onnx_export.model_files(path)
    log.info("export stages (s): %s", ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    return {
        "dims": dataclasses.asdict(contract.dims),
        "onnx_file": MODEL_FILE,
        "files": [f.name for f in files],
        "graph": ecfg.graph,
        "layer_outputs": ecfg.layer_outputs,
        "cache_layout": ecfg.cache_layout,
        "input_names": input_names,
        "output_names": output_names,
        "dynamic_axes": axes if ecfg.dynamic_axes else {},
        "dtype": cfg.model.dtype,
        "cache_key": key,
        "key_material": material,
        "opset": opset,
        "exporter": ecfg.exporter,
        "external_data": external,
        "onnx_size_mb": sum(f.stat().st_size for f in files) / 1e6,
        "stage_seconds": stages,
        "parity_max_abs_diff": result.max_abs_diff,
        "parity_rel_l2": result.rel_l2,
        "parity_cosine": result.cosine,
        "parity_kl": result.kl,
        "parity_cases": result.per_case,
        "parity_token_mismatches": result.token_mismatches,
        "parity_inputs": {"batch": ecfg.parity_batch_size, "seq": ecfg.parity_seq_len, "seed": cfg.seed},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _lap_timer():
    last = [time.perf_counter()]

    def lap() -> float:
        now = time.perf_counter()
        elapsed, last[0] = now - last[0], now
        return elapsed

    return lap


def _dummy_inputs(tokenizer, contract: GraphContract, dtype) -> tuple:
    """The walkthrough's dummy prompt as a batch of 3 (for the kv_cache graph: a prefill after a few
    written slots, into a cache whose capacity differs from every other dim)."""
    import torch

    from ascend_lab import graph_contract as gc

    ids = torch.tensor(tokenizer(DUMMY_PROMPT)["input_ids"], dtype=torch.long) % contract.dims.vocab_size
    ids = ids.unsqueeze(0).repeat(DUMMY_BATCH, 1)
    if contract.graph != "kv_cache":
        return ids, torch.ones_like(ids)
    seq = ids.shape[1]
    pads = torch.tensor([0, 1, 2][:DUMMY_BATCH])
    written = 2
    positions = torch.from_numpy(gc.positions(written, seq, pads.numpy()))
    cache = torch.zeros(contract.cache_shape(written + seq + DUMMY_SPARE_SLOTS, DUMMY_BATCH), dtype=dtype)
    return ids, positions, torch.tensor([written]), pads, cache


def _enforce_tolerance(tracker, meta: dict, tol: float, tol_source: str) -> None:
    worst = meta["parity_max_abs_diff"]
    if worst <= tol:
        return
    tracker.log_metrics({"parity_max_abs_diff": worst, "parity_rel_l2": meta["parity_rel_l2"]})
    cases = ", ".join(f"{k} {v:.3g}" for k, v in meta.get("parity_cases", {}).items())
    raise AscendLabError(
        f"ONNX parity check failed: max |onnxruntime - torch| = {worst:.3g} (rel L2 {meta['parity_rel_l2']:.3g}; "
        f"per case: {cases}) is above export.parity_tol={tol:g} ({tol_source}). The {meta['graph']} graph "
        f"({meta['dtype']}) does not reproduce PyTorch within tolerance: raise export.parity_tol if this drift "
        "is acceptable, or export in model.dtype=float32 / another export.exporter or export.opset.")


def _from_meta(entry: Path, meta: dict, hit: bool) -> ExportedModel:
    return ExportedModel(
        onnx_path=(entry / meta["onnx_file"]).resolve(), sha256=meta["sha256"], graph=meta["graph"],
        dtype=meta["dtype"], dims=ModelDims(**meta["dims"]),
        input_names=list(meta["input_names"]), output_names=list(meta["output_names"]),
        dynamic_axes={k: {int(a): n for a, n in v.items()} for k, v in meta["dynamic_axes"].items()},
        cache_key=meta["cache_key"], cache_hit=hit, extra=meta, layer_outputs=meta.get("layer_outputs", False),
        cache_layout=meta.get("cache_layout") if meta.get("cache_layout") in ("rank5", "rank4") else "rank5",
    )


def _log_run(tracker, exported: ExportedModel, meta: dict, seconds: float, artifact_max_mb: float,
             tol: float) -> None:
    size_mb = meta["onnx_size_mb"]
    tracker.log_metrics({
        "export_cache_hit": int(exported.cache_hit),
        "export_seconds": seconds,
        "onnx_size_mb": size_mb,
        "parity_max_abs_diff": meta["parity_max_abs_diff"],
        "parity_rel_l2": meta["parity_rel_l2"],
        **{key: meta[key] for key in ("parity_cosine", "parity_kl") if meta.get(key) is not None},
        **{f"parity_max_abs_diff_{case}": v for case, v in meta.get("parity_cases", {}).items()},
        **({"parity_token_mismatches": meta["parity_token_mismatches"]} if "parity_token_mismatches" in meta else {}),
    })
    tags = {"onnx_sha256": exported.sha256, "onnx_path": str(exported.onnx_path),
            "export_cache_key": exported.cache_key, "export_graph": exported.graph,
            "onnx_opset": meta.get("opset"), "parity_tol": tol}
    if size_mb <= artifact_max_mb:
        tracker.log_artifact(exported.onnx_path.parent, "onnx")
        tags["onnx_artifact"] = "onnx/" + exported.onnx_path.name
    else:
        note = (f"not uploaded: {size_mb:.0f} MB > export.artifact_max_mb={artifact_max_mb:g}; "
                f"the graph stays at onnx_path (sha256 {exported.sha256[:12]}…)")
        tags["onnx_artifact"] = note
        log.info("ONNX artifact %s", note)
    tracker.set_tags(tags)


def exported_summary(exported: ExportedModel) -> dict:
    """Plain fields of an :class:`ExportedModel` (for JSON and tables)."""
    out = asdict(exported)
    out.pop("extra")
    out["onnx_path"] = str(exported.onnx_path)
    return out


__all__ = ["ExportedModel", "ensure_exported", "parity_tolerance", "exported_summary"]
