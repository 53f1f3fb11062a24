"""The options of the ``runtime`` group: each runtime package's config dataclass, registered in Hydra's ConfigStore
(apart from the package's ``__init__``, so a runtime module imports without Hydra; Hydra loads only on registering,
so ``--help`` lists them without it)."""

from __future__ import annotations

from ascend_lab.config import register_schema
from ascend_lab.config.runtime import RuntimeConfig
from ascend_lab.runtimes.acl.config import AclRuntimeConfig
from ascend_lab.runtimes.onnxruntime.config import OnnxRuntimeConfig
from ascend_lab.runtimes.torch.config import TorchRuntimeConfig

# The options of the `runtime` group; auto is the base class (only a name: it picks one of the others).
RUNTIME_CONFIGS: dict[str, type[RuntimeConfig]] = {
    "auto": RuntimeConfig, "torch": TorchRuntimeConfig, "onnxruntime": OnnxRuntimeConfig, "acl": AclRuntimeConfig,
}


def register_configs() -> None:
    """Store the root schema and each runtime's schema as an option of the `runtime` group, what every compose
    needs (the CLI, the tests, the benchmark scripts); idempotent."""
    from hydra.core.config_store import ConfigStore

    register_schema()
    store = ConfigStore.instance()
    for name, schema in RUNTIME_CONFIGS.items():
        store.store(group=RuntimeConfig.group, name=name, node=schema)
