"""Typed config: one dataclass schema per group, composed into :class:`AppConfig`.

The root schema is registered in Hydra's ConfigStore as ``ascend_lab_schema`` and sits first in
``conf/config.yaml``'s defaults list, so every group YAML is merged into a typed node: an unknown
key or a wrong type fails at composition, and ``validate`` runs each group's ``__post_init__``
checks (ranges, choices, exclusive options) before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ascend_lab.config.atc import AtcConfig
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.config.device import DeviceConfig
from ascend_lab.config.doctor import DoctorConfig
from ascend_lab.config.export import ExportConfig
from ascend_lab.config.mnist import MnistConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.config.runtime import RuntimeConfig
from ascend_lab.config.tracking import TrackingConfig


class Task(str, Enum):
    """What one job does (`task=...`)."""

    doctor = "doctor"
    mnist = "mnist"
    export = "export"
    compile = "compile"
    infer = "infer"
    bench = "bench"
    pipeline = "pipeline"


@dataclass
class AppConfig:
    task: Task = field(default=Task.pipeline, metadata={"help": "doctor, mnist, export, compile, infer, bench or pipeline."})
    seed: int = field(default=0, metadata={"help": "Seeds model weights, data splits, inputs and training."})
    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    atc: AtcConfig = field(default_factory=AtcConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    mnist: MnistConfig = field(default_factory=MnistConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)


SCHEMA_NAME = "ascend_lab_schema"


def register_configs() -> None:
    """Store the root schema; idempotent (Hydra re-reads the store on every compose)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=AppConfig)


def validate(cfg: DictConfig) -> AppConfig:
    """Turn the composed config into dataclasses, running every group's checks.

    Raises :class:`ascend_lab.errors.ConfigError` naming the first invalid key.
    """
    app_cfg = OmegaConf.to_object(cfg)
    assert isinstance(app_cfg, AppConfig), type(app_cfg)
    return app_cfg


__all__ = [
    "AppConfig", "AtcConfig", "BenchmarkConfig", "DeviceConfig", "DoctorConfig", "ExportConfig",
    "MnistConfig", "ModelConfig", "RuntimeConfig", "Task", "TrackingConfig", "register_configs", "validate",
]
