"""Lineage facts recorded with runs and cache keys: file digests and installed versions."""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Iterable


def sha256_files(paths: Iterable[Path], chunk: int = 16 * 1024 * 1024) -> str:
    """One sha256 over the files in order (a model and its external-data file hash together)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def installed_version(package: str) -> str:
    """The installed distribution's version, without importing it."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    return {name: installed_version(name) for name in packages}
