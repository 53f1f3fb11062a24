"""Run metadata: the resolved config as flat params, and the environment as tags.

Params are the config flattened to dotted keys (``benchmark.batch_size``), the names MLflow's
search and compare view use; tags record what the config does not say: package and CANN
versions, the git commit, and the owning process (host and pid).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from ascend_lab.provenance import installed_versions
from ascend_lab.tracking.owner import owner_tags

VERSIONED_PACKAGES = ("torch", "torch_npu", "transformers", "onnx", "onnxruntime", "mlflow", "hydra-core")
# `git rev-parse` on a slow network file system should not hold up a job.
GIT_TIMEOUT_S = 5


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"atc": {"soc_version": ..}}`` → ``{"atc.soc_version": ..}``; lists stay one value."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, full + "."))
        else:
            flat[full] = value
    return flat


def git_commit(directory: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], **installed_versions(VERSIONED_PACKAGES)}


def environment_tags(launch_dir: Path) -> dict[str, str]:
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    from ascend_lab.cann.toolkit import toolkit_version

    tags["version.cann"] = toolkit_version() or "not installed"
    # With host, identifies the process that owns the run: a job killed from outside (or by a
    # launcher's timeout) is found by it, and a later job can tell a live owner from a dead one.
    tags.update(owner_tags())
    commit = git_commit(launch_dir) or git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def config_params(cfg: Any) -> dict[str, Any]:
    """The resolved config as flat params, without ``hydra``.

    ``cfg`` is the composed ``DictConfig`` or a dataclass config (a pipeline stage's ``AppConfig``).
    """
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    resolved = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    return flatten(resolved)

