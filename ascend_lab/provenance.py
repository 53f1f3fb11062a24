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


def digest_mismatch(files: list[Path], record: Path, sha256: str) -> str | None:
    """Why ``files`` no longer hash to ``sha256`` (recorded in the file ``record``), or None.

    Only files modified after ``record`` was written are hashed again (a truncated or edited file
    gets a new mtime), so reusing an untouched multi-GB model costs no re-read.
    """
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    written = record.stat().st_mtime_ns
    if all(f.stat().st_mtime_ns <= written for f in files):
        return None
    actual = sha256_files(files)
    if actual == sha256:
        return None
    return (f"{', '.join(str(f) for f in files)} changed after {record.name} was written: sha256 "
            f"{actual[:16]}… instead of the recorded {sha256[:16]}… (truncated or edited)")


def installed_version(package: str) -> str:
    """The installed distribution's version, without importing it."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    return {name: installed_version(name) for name in packages}
