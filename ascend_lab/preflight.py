"""Checks that need no work, run after the config validates and before the job's MLflow run opens.

What the config cannot say by itself but the host can answer at once: whether the device's module is
installed (found with ``importlib.util.find_spec``, without importing torch_npu, which takes seconds
and initialises the driver), whether pyACL is there for ``runtime=acl``, and whether the files the job
must read exist and read. A failure here is one line naming the key, then the details indented; no
run is opened for a config that never ran.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

from ascend_lab.config import TASK_GROUPS, AppConfig, Task
from ascend_lab.errors import ConfigError, ToolchainError

NPU_INSTALL_HINT = "pip install 'ascend_lab[npu]' on an Ascend host (torch_npu built for this torch and CANN)"


def module_found(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check(cfg: AppConfig, resolve_path: Callable[[str], Path]) -> None:
    """Raise the first problem the host shows with ``cfg``; ``resolve_path`` makes relative paths absolute."""
    from ascend_lab.cann import toolkit

    groups = TASK_GROUPS[cfg.task]
    if "device" in groups and cfg.device.name == "npu" and not module_found("torch_npu"):
        raise ToolchainError("device=npu: torch_npu is not installed here, so torch cannot use an NPU.\n"
                             f"  install it: {NPU_INSTALL_HINT}\n"
                             "  or run elsewhere: device=auto (the best device present) or device=cpu")
    if "runtime" in groups and getattr(cfg.runtime, "name", None) == "acl" and not module_found("acl"):
        raise ToolchainError(toolkit.missing_toolkit_message(
            "runtime=acl needs pyACL (`import acl`), which is not found", cfg.atc.toolkit_home,
            "use runtime=onnxruntime or runtime=torch"))
    if "model" in groups and cfg.model.weights == "pretrained" and cfg.model.path:
        folder = resolve_path(cfg.model.path)
        if not folder.exists():
            raise ConfigError("model.path", cfg.model.path, f"{folder} does not exist.\n"
                              "  give the folder of a checkpoint (config.json, weights and tokenizer files)")
    if cfg.task is Task.doctor and cfg.doctor.compare_to is not None:
        from ascend_lab.telemetry import environment

        # A file is read here, before the store exists; a run id is looked up in the store by the task.
        value = str(cfg.doctor.compare_to)
        file = environment.reference_file(value, resolve_path(value))
        if file is not None:
            environment.load_snapshot_file(file, value)
    if cfg.task is Task.accuracy:
        from ascend_lab.accuracy.prompts import prompt_texts

        prompt_texts(cfg.accuracy, resolve_path)
