"""The one content-addressed cache: exported graphs, graphs derived from them, compiled ``.om`` models.

An entry is a folder named by its key holding the artifact's files and a ``meta.json`` that records
their names and one sha256 over them. :func:`ensure` is the whole protocol, the same for every kind:

1. **key** — the caller names the entry folder after everything that determines the artifact;
2. **verify** — a complete entry whose files still hash to its record, and whose record has the values
   the caller requires of it (the format its code writes now), is a hit (an untouched multi-GB file is
   not re-read: see :func:`ascend_lab.provenance.digest_mismatch`); a damaged or stale one is rebuilt,
   with a warning and the reason handed back;
3. **lock** — otherwise a per-key file lock is taken, so parallel sweep jobs asking for one key build it
   once (an ATC compile can take an hour): the others wait, then find the entry;
4. **staging** — the artifact is built in a private folder beside the entry;
5. **publish** — ``meta.json`` is written and the folder renamed into place (atomic on one
   filesystem), so a killed job never leaves a half-written entry.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from ascend_lab.provenance import digest_mismatch, sha256_files

log = logging.getLogger(__name__)

META_FILE = "meta.json"
# Waiting this long on another job's build means that job is stuck (a 1.8B export takes minutes, an ATC
# compile of a large model up to an hour).
LOCK_TIMEOUT_S = 3 * 3600


@dataclass(frozen=True)
class Entry:
    folder: Path
    meta: dict
    hit: bool  # found complete and intact, not built now
    damaged: str | None = None  # why an earlier entry of this key was rebuilt

    def path(self, name: str) -> Path:
        return self.folder / name


def read_meta(folder: Path) -> dict | None:
    """The entry's meta.json when the entry is complete (meta and every recorded file present), else None."""
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = meta.get("files")
    if not isinstance(files, list) or not files or not all((folder / name).is_file() for name in files):
        return None
    return meta


def damage(folder: Path, meta: dict) -> str | None:
    """Why a complete entry's files no longer match its record, or None."""
    return digest_mismatch([folder / name for name in meta["files"]], folder / META_FILE, meta["sha256"])


def stale(meta: dict, required: Mapping[str, object]) -> str | None:
    """Which required meta value an entry lacks (it was built by older code), or None."""
    for key, value in required.items():
        if meta.get(key) != value:
            return f"its {key} is {meta.get(key)!r}, this code writes {value!r}"
    return None


def ensure(folder: Path, build: Callable[[Path], dict], required: Mapping[str, object] | None = None) -> Entry:
    """The entry at ``folder``: reused when intact, else built by ``build(staging_folder)``.

    ``build`` writes the artifact's files into the staging folder and returns the meta to record, with
    ``files``: the artifact's file names in hashing order (the main file first). The sha256 over them
    is added here. ``required``: meta values an entry must have to be reused (say ``{"format": 2}`` once a
    derivation's code changes what it writes); an entry without them is rebuilt like a damaged one.
    """
    required = required or {}
    meta = read_meta(folder)
    problem = None
    if meta is not None:
        # Hash-check first: a damaged entry is reported as damaged, whatever its record says.
        damaged = damage(folder, meta)
        problem = damaged or stale(meta, required)
        if problem is None:
            return Entry(folder, meta, hit=True)
        log.warning("cache entry %s %s (%s); building it again", folder,
                    "is damaged" if damaged else "was built by older code", problem)
    with locked(folder):
        fresh = read_meta(folder)  # another job may have built it while we waited
        if (fresh is not None and fresh != meta and stale(fresh, required) is None
                and damage(folder, fresh) is None):
            return Entry(folder, fresh, hit=True, damaged=problem)
        with staging(folder) as tmp:
            built = build(tmp)
            built["sha256"] = sha256_files([tmp / name for name in built["files"]])
            publish(tmp, folder, built)
    return Entry(folder, built, hit=False, damaged=problem)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock", timeout=LOCK_TIMEOUT_S):
        yield


@contextmanager
def staging(folder: Path) -> Iterator[Path]:
    """A private folder beside ``folder``; removed unless :func:`publish` moved it into place."""
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, folder: Path, meta: dict) -> None:
    """Write meta.json into the staged folder and rename it to the entry."""
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str), encoding="utf-8")
    if folder.exists():  # an incomplete entry (no meta) left by a killed job, or a damaged one
        shutil.rmtree(folder)
    os.rename(tmp, folder)
