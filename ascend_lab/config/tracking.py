"""`tracking` group: where runs, params, metrics and artifacts are recorded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Optional
from urllib.parse import urlparse

from ascend_lab.errors import require

# URI schemes MLflow's tracking client accepts for a backend store or server.
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "databricks", "file")


@dataclass
class TrackingConfig:
    group: ClassVar[str] = "tracking"

    enabled: bool = field(default=True, metadata={"help": "false (or tracking=off) runs without MLflow at all."})
    uri: str = field(
        default="sqlite:///outputs/mlflow.db",
        metadata={"help": "MLflow tracking URI. A relative sqlite path is taken from the launch directory; "
                          "http(s)://host:port points at an `mlflow server`."},
    )
    experiment: str = field(default="ascend_lab", metadata={"help": "MLflow experiment name."})
    artifact_location: Optional[str] = field(
        default="outputs/mlartifacts",
        metadata={"help": "Artifact root for a new experiment on a local store (relative to the launch "
                          "directory). Ignored for an existing experiment and for http(s) servers."},
    )
    run_name: Optional[str] = field(default=None, metadata={"help": "Run name; default: task and overrides."})
    strict: bool = field(
        default=True,
        metadata={"help": "If the tracking server is unreachable: true fails before any work, "
                          "false warns and falls back to a local SQLite store."},
    )
    skip_finished: bool = field(
        default=False,
        metadata={"help": "Resume: skip a job whose identical config already has a FINISHED run in the experiment "
                          "(tag config_hash: task, seed and the groups that task reads, ascend_lab.config.TASK_GROUPS, "
                          "so a change elsewhere, e.g. mnist.* for task=bench, does not re-run it); failed and new "
                          "configs run."},
    )

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        scheme = urlparse(self.uri).scheme
        require(
            scheme in TRACKING_SCHEMES,
            "tracking.uri", self.uri,
            "not a tracking URI; use sqlite:///path/mlflow.db or http://host:port "
            f"(schemes: {', '.join(TRACKING_SCHEMES)})",
        )
        if scheme == "sqlite":
            # sqlite:// alone is an in-memory database: every run would vanish when the job ends.
            require(self.uri.startswith("sqlite:///") and len(self.uri) > len("sqlite:///"), "tracking.uri", self.uri,
                    "a SQLite store needs a file: sqlite:///relative/path.db or sqlite:////absolute/path.db")
        if scheme == "file":
            require(os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"), "tracking.uri", self.uri,
                    "MLflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true is set; use "
                    "sqlite:///outputs/mlflow.db (`mlflow migrate-filestore` moves old runs over)")
        require(bool(self.experiment), "tracking.experiment", self.experiment, "must not be empty")
