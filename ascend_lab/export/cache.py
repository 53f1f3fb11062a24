"""The content-addressed export cache.

An entry is ``<export.cache_dir>/<model name>-<graph>-<key[:16]>/`` holding ``model.onnx``
(+ ``model.onnx.data``) and ``meta.json``. The key hashes everything that determines the graph:
the model config, the export fields that shape the graph, the seed (random weights only), the
library versions and :data:`CACHE_FORMAT`. Writers build an entry in a temporary folder beside
it and rename it into place while holding a per-key file lock, so parallel sweep jobs asking for
the same key export once: the others wait on the lock and then find the entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ascend_lab.config.export import ExportConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.provenance import installed_versions

# Bump when the wrappers or the export steps change what a given config produces.
CACHE_FORMAT = 2  # 2: int8 through export.quantize (weights folded, MatMulNBits)
META_FILE = "meta.json"
# Export fields that change the graph; parity_*, cache_dir and artifact limits do not.
GRAPH_FIELDS = ("graph", "opset", "do_constant_folding", "exporter", "dynamic_axes", "external_data", "quantize")
KEY_PACKAGES = ("torch", "transformers", "onnx")
# Waiting this long on another job's export means that job is stuck (a 1.8B export takes minutes).
LOCK_TIMEOUT_S = 3 * 3600


def key_material(model_cfg: ModelConfig, export_cfg: ExportConfig, seed: int,
                 versions: dict[str, str] | None = None) -> dict:
    """What the cache key hashes (also stored in meta.json, so a key can be explained)."""
    model = dataclasses.asdict(model_cfg)
    model.pop("cache_dir")  # where downloads go does not change the weights
    material = {
        "format": CACHE_FORMAT,
        "model": model,
        "export": {name: getattr(export_cfg, name) for name in GRAPH_FIELDS},
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


def entry_dir(cache_dir: Path, model_name: str, graph: str, key: str) -> Path:
    return cache_dir / f"{model_name}-{graph}-{key[:16]}"


@contextmanager
def locked(entry: Path) -> Iterator[None]:
    from filelock import FileLock

    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock", timeout=LOCK_TIMEOUT_S):
        yield


def read_meta(entry: Path) -> dict | None:
    """The entry's meta.json when the entry is complete, else None."""
    meta_path = entry / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not (entry / meta.get("onnx_file", "model.onnx")).is_file():
        return None
    return meta


@contextmanager
def staging(entry: Path) -> Iterator[Path]:
    """A temporary folder beside ``entry``; removed unless :func:`publish` moved it into place."""
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, entry: Path, meta: dict) -> None:
    """Write meta.json into the staged folder and rename it to the entry (atomic on one filesystem)."""
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    if entry.exists():  # an incomplete entry (no meta) left by a killed job, or a damaged one
        shutil.rmtree(entry)
    os.rename(tmp, entry)


