"""Keys of the export cache: what determines an exported graph, and the entry folder it names.

An entry is ``<export.cache_dir>/<model name>-<graph>-<dtype>-<key[:16]>/`` (the protocol is
:mod:`ascend_lab.artifact_cache`). The key hashes everything that determines the graph: the model
config (its dtype included), the export fields that shape the graph, the seed (random weights only),
the files of a local checkpoint, the library versions and :data:`CACHE_FORMAT`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from ascend_lab.config.export import INT4_KEYS, ExportConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.provenance import installed_versions

# Bump when the wrappers or the export steps change what a given config produces.
# 3: the kv_cache graph of ascend_lab.graph_contract (fixed-capacity cache, positions in); 4: its sizes read
# once from the inputs, not per layer (ascend_lab.qwen2.project); 5: the attention softmax in float32 (Cast
# before Softmax, ascend_lab.qwen2)
CACHE_FORMAT = 5
# Export fields that change the graph; parity_*, cache_dir, artifact limits, kv_capacity and prefill_chunks
# (the cache dim is symbolic in the file; chunks are gears of the compile) do not. The int4 keys
# (config.export.INT4_KEYS) shape it only with export.quantize=int4 and are hashed only then, so no other key moves.
GRAPH_FIELDS = ("graph", "opset", "do_constant_folding", "exporter", "dynamic_axes", "external_data", "quantize",
                "layer_outputs", "fuse_projections", "cache_layout")
KEY_PACKAGES = ("torch", "transformers", "onnx")


def key_material(model_cfg: ModelConfig, export_cfg: ExportConfig, seed: int,
                 versions: dict[str, str] | None = None) -> dict:
    """What the cache key hashes (also stored in meta.json, so a key can be explained)."""
    model = dataclasses.asdict(model_cfg)
    model.pop("cache_dir")  # where downloads go does not change the weights
    material = {
        "format": CACHE_FORMAT,
        "model": model,
        "export": {name: getattr(export_cfg, name)
                   for name in GRAPH_FIELDS + (INT4_KEYS if export_cfg.quantize == "int4" else ())},
        "versions": versions if versions is not None else installed_versions(KEY_PACKAGES),
    }
    if model_cfg.weights == "random":
        material["seed"] = seed
    elif model_cfg.path:
        material["local_files"] = folder_fingerprint(Path(model_cfg.path).expanduser())
    return material


def cache_key(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def folder_fingerprint(folder: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of the files of a local checkpoint: new weights make a new key."""
    if not folder.is_dir():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size, int(p.stat().st_mtime))
                  for p in folder.rglob("*") if p.is_file())


def entry_dir(cache_dir: Path, model_name: str, graph: str, dtype: str, key: str) -> Path:
    return cache_dir / f"{model_name}-{graph}-{dtype}-{key[:16]}"
