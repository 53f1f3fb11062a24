"""Runtimes as plugins: one package per runtime (``torch``, ``onnxruntime``, ``acl``), each with its config
(``config.py``, an option of the ``runtime`` group), the runtime and its cache backend (``runtime.py``) and its
profiler. What they share: the interface (:mod:`~ascend_lab.runtimes.base`) and the generation engines over it
(:mod:`~ascend_lab.runtimes.engine`). The runtime packages never import each other.

Opening one is :func:`ascend_lab.prepare.open_engine`'s business: it prepares the artifact the runtime's config
declares (``artifact``) and instantiates the class its ``_target_`` names.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from ascend_lab.config.runtime import RuntimeConfig
from ascend_lab.runtimes.acl.config import AclRuntimeConfig
from ascend_lab.runtimes.onnxruntime.config import OnnxRuntimeConfig
from ascend_lab.runtimes.torch.config import TorchRuntimeConfig

# The options of the `runtime` group; auto is the base class (only a name: it picks one of the others).
RUNTIME_CONFIGS: dict[str, type[RuntimeConfig]] = {
    "auto": RuntimeConfig, "torch": TorchRuntimeConfig, "onnxruntime": OnnxRuntimeConfig, "acl": AclRuntimeConfig,
}


def register_runtime_configs() -> None:
    """Store each runtime's schema as an option of the `runtime` group; idempotent."""
    store = ConfigStore.instance()
    for name, schema in RUNTIME_CONFIGS.items():
        store.store(group=RuntimeConfig.group, name=name, node=schema)
