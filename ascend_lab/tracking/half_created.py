"""A SQLite store left half-created: its schema stopped short of MLflow's (a job killed while it
created the store, or two clients migrating at once before the store was created under a lock).

MLflow then refuses every client ("Detected out-of-date database schema", or alembic's "Online
migration expected to match one row"). A store holding no run has nothing to lose: it is moved aside
(kept, renamed) and created anew. A store holding runs is left as it is, and the error names the file
and the fix: a backup, then ``mlflow db upgrade`` (MLflow's own migration command).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from ascend_lab.errors import AscendLabError


def schema_revision(db_path: Path) -> tuple[bool, str | None, int]:
    """(has MLflow tables, the alembic revision recorded or None, runs recorded) of a SQLite file."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        revision = None
        if "alembic_version" in tables:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
            revision = rows[0][0] if len(rows) == 1 else None
        runs = connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    return bool(tables - {"alembic_version"}) or "alembic_version" in tables, revision, runs


def latest_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def set_aside_if_half_created(db_path: Path) -> Path | None:
    """Move a half-created store holding no run aside and return where it went; None if the store is not
    half-created (the caller's error stands). A half-created store with runs raises, naming the fix."""
    if not db_path.is_file():
        return None
    try:
        has_tables, revision, runs = schema_revision(db_path)
    except sqlite3.Error:
        return None  # not a SQLite database: another problem, reported by the caller
    if not has_tables or revision == latest_revision():
        return None
    if runs:
        uri = f"sqlite:///{db_path}"
        raise AscendLabError(
            f"the MLflow store {db_path} is half-created (schema version {revision or 'missing'}, MLflow expects "
            f"{latest_revision()}) and holds {runs} run(s).\n"
            f"  back it up: cp {db_path} {db_path}.bak\n"
            f"  then migrate it: mlflow db upgrade {uri}\n"
            f"  or start a new store: mv {db_path} {db_path}.old (its runs stay in that file)")
    aside = db_path.with_name(f"{db_path.name}.half-created-{time.strftime('%Y%m%d-%H%M%S')}")
    db_path.rename(aside)
    _forget_engine(f"sqlite:///{db_path}")
    return aside


def _forget_engine(uri: str) -> None:
    """MLflow keeps one engine per URI for the process (``SqlAlchemyStore._engine_map``); its pooled connections
    would still read the file just moved aside."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engines = getattr(SqlAlchemyStore, "_engine_map", {})
    engine = engines.pop(uri, None)
    if engine is not None:
        engine.dispose()
