"""Typed config: one dataclass schema per group, composed into :class:`AppConfig`.

The root schema is registered in Hydra's ConfigStore as ``ascend_lab_schema`` and sits first in
``conf/config.yaml``'s defaults list, so every group YAML is merged into a typed node: an unknown
key or a wrong type fails at composition, and ``validate`` runs each group's ``__post_init__``
checks (ranges, choices, exclusive options) before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from enum import Enum

from typing import TYPE_CHECKING

from ascend_lab.config.accuracy import AccuracyConfig
from ascend_lab.config.atc import AtcConfig
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.config.device import DeviceConfig
from ascend_lab.config.doctor import DoctorConfig
from ascend_lab.config.export import ExportConfig
from ascend_lab.config.loadtest import LoadtestConfig
from ascend_lab.config.mnist import MnistConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.config.profile import ProfileConfig
from ascend_lab.config.runtime import RuntimeConfig
from ascend_lab.config.search import SearchConfig
from ascend_lab.config.serve import ServeConfig
from ascend_lab.config.telemetry import TelemetryConfig
from ascend_lab.config.tracking import TrackingConfig
from ascend_lab.errors import AscendLabError, ConfigError, require

if TYPE_CHECKING:  # Hydra and OmegaConf load when a config is composed, not for `--help`
    from omegaconf import DictConfig

# numpy's legacy seeding and many libraries take 32-bit seeds.
MAX_SEED = 2**32 - 1
# Tasks that feed benchmark.seq_len tokens (and, generating, new_tokens more) through the model.
SEQUENCE_TASKS = ("bench", "pipeline")


class Task(str, Enum):
    """What one job does (`task=...`)."""

    doctor = "doctor"
    mnist = "mnist"
    export = "export"
    compile = "compile"
    infer = "infer"
    bench = "bench"
    accuracy = "accuracy"
    pipeline = "pipeline"
    serve = "serve"
    loadtest = "loadtest"


@dataclass
class AppConfig:
    task: Task = field(default=Task.pipeline,
                       metadata={"help": "doctor, mnist, export, compile, infer, bench, accuracy, pipeline, serve or loadtest."})
    seed: int = field(default=0, metadata={"help": "Seeds model weights, data splits, inputs and training."})
    verbose: bool = field(default=False, metadata={
        "help": "true: show the INFO lines and progress bars of the libraries a job drives (onnxruntime's optimizer, "
                "MLflow, alembic, Optuna, the torch profiler), which are quiet by default (ascend_lab/quiet.py)."})
    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    atc: AtcConfig = field(default_factory=AtcConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    mnist: MnistConfig = field(default_factory=MnistConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    accuracy: AccuracyConfig = field(
        default_factory=AccuracyConfig,
        metadata={"help": "task=accuracy: the reference the candidate is compared with, the prompts, the gate's "
                          "thresholds per precision and the layer report (ascend_lab/config/accuracy.py)."})
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    serve: ServeConfig = field(default_factory=ServeConfig, metadata={
        "help": "task=serve (and task=loadtest loadtest.target=self): the OpenAI-compatible server (ascend_lab/config/serve.py)."})
    loadtest: LoadtestConfig = field(default_factory=LoadtestConfig, metadata={
        "help": "task=loadtest: the load run against an endpoint (ascend_lab/config/loadtest.py)."})


# The config groups each task reads: what decides its result. A job's identity (the resume hash) covers
# only these (plus the task and the seed), and an override of a group outside them has no effect on it.
# `tracking` says how a job is recorded, never what it computes, so no task lists it.
TASK_GROUPS: dict[Task, tuple[str, ...]] = {
    Task.doctor: ("device", "doctor", "atc"),
    Task.mnist: ("device", "mnist"),
    Task.export: ("model", "export"),
    Task.compile: ("model", "export", "atc", "benchmark"),
    Task.infer: ("device", "model", "export", "atc", "runtime", "benchmark"),
    Task.bench: ("device", "model", "export", "atc", "runtime", "benchmark"),
    Task.accuracy: ("device", "model", "export", "atc", "runtime", "benchmark", "accuracy"),
    Task.pipeline: ("device", "doctor", "model", "export", "atc", "runtime", "benchmark"),
    Task.serve: ("device", "model", "export", "atc", "runtime", "serve"),
    # With loadtest.target=url the serving groups describe nothing measured; TASK_GROUPS is per task, so they stay.
    Task.loadtest: ("device", "model", "export", "atc", "runtime", "serve", "loadtest"),
}

# Tasks that compile an .om whatever the runtime; the others that read `runtime` compile only with runtime=acl or
# auto (ascend_lab.prepare). A job that compiles nothing reads, of the atc group, only where the CANN toolkit is
# (its version picks the kv-cache layout; its set_env.sh is named in error messages).
COMPILING_TASKS = (Task.compile, Task.pipeline)
ATC_KEYS_READ_WITHOUT_COMPILING = ("toolkit_home",)

SCHEMA_NAME = "ascend_lab_schema"


def register_schema() -> None:
    """Store the root schema; idempotent (Hydra re-reads the store on every compose). The runtime group's options
    live with the runtimes: :func:`ascend_lab.runtimes.registry.register_configs` stores both."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=AppConfig)


def validate(cfg: DictConfig) -> AppConfig:
    """Turn the composed config into dataclasses, running every group's checks.

    Raises :class:`ascend_lab.errors.ConfigError` naming the first invalid key.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    _reject_unknown_keys(cfg, "")
    try:
        app_cfg = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:  # ${...} that resolves to nothing, or ??? left unset
        key = getattr(exc, "full_key", None) or "the config"
        raise AscendLabError(f"Invalid config: {key}: {str(exc).splitlines()[0]}. Give it a value "
                             f"({key}=<value>) or make the ${{...}} interpolation name an existing key.") from None
    assert isinstance(app_cfg, AppConfig), type(app_cfg)
    require(0 <= app_cfg.seed <= MAX_SEED, "seed", app_cfg.seed, f"must be between 0 and {MAX_SEED}")
    require(not (app_cfg.search.objective or app_cfg.search.accuracy) or app_cfg.task is Task.bench,
            "search.objective" if app_cfg.search.objective else "search.accuracy", True,
            f"only task=bench measures what a tuning sweep compares (task={app_cfg.task.value}); use task=bench")
    if app_cfg.task is Task.loadtest and app_cfg.loadtest.resolved_target == "url":
        changed = [f.name for f in dataclasses.fields(ServeConfig)
                   if getattr(app_cfg.serve, f.name) != getattr(ServeConfig(), f.name)]
        require(not changed, f"serve.{changed[0] if changed else ''}",
                getattr(app_cfg.serve, changed[0]) if changed else None,
                "is not read with loadtest.target=url (that server is configured where it runs); drop it")
    if app_cfg.task.value in SEQUENCE_TASKS:
        bench = app_cfg.benchmark
        generate = bench.scenario == "generate"
        check_sequence_fits(app_cfg.model, bench.seq_len + (bench.new_tokens if generate else 0),
                            "benchmark.seq_len", bench.seq_len,
                            "benchmark.seq_len + benchmark.new_tokens" if generate else "benchmark.seq_len")
    return app_cfg


def check_sequence_fits(model: ModelConfig, tokens: int, key: str, value: object, what: str) -> None:
    """Positions beyond the model's rope tables run without error and give meaningless output.

    A local checkpoint (model.path) brings its own limit, which transformers applies when loading.
    """
    if model.path is None and tokens > model.max_position_embeddings:
        raise ConfigError(key, value, (
            f"{what} = {tokens} positions, more than model.max_position_embeddings="
            f"{model.max_position_embeddings} of model {model.name}; use a shorter sequence"))


def _reject_unknown_keys(node: DictConfig, prefix: str) -> None:
    """Keys a schema does not have (added with `+key=value`) would otherwise be carried silently."""
    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return
    known = [f.name for f in dataclasses.fields(schema)]
    for key in node:
        full = f"{prefix}{key}"
        if key not in known and full != "hydra":
            close = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(full, node._get_node(key)._value(), (
                "no such key" + (f" (did you mean {prefix}{close[0]}?)" if close else "")
                + "; `python -m ascend_lab.run --cfg job` prints every key (a leading + cannot add keys "
                  "the schema does not have)"))
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _reject_unknown_keys(child, f"{full}.")


__all__ = [
    "ATC_KEYS_READ_WITHOUT_COMPILING", "COMPILING_TASKS", "AccuracyConfig", "AppConfig", "AtcConfig",
    "BenchmarkConfig", "DeviceConfig", "DoctorConfig", "ExportConfig",
    "LoadtestConfig", "MnistConfig", "ModelConfig", "ProfileConfig", "RuntimeConfig", "SearchConfig", "ServeConfig",
    "TASK_GROUPS", "Task", "TelemetryConfig", "TrackingConfig", "check_sequence_fits", "register_schema",
    "validate",
]
