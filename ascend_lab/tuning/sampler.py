"""Optuna's TPE sampler with the default configuration as the search's first trial.

A search's report compares the best configuration with the default one (:mod:`ascend_lab.tuning.report`), so the
default must be measured in the same sweep, on the same host, at the same time: trial 0 takes every searched key at
its default, which is the schema's (``ascend_lab.config``: the dataclasses are the one source of defaults); every
later trial is TPE's. Hydra's Optuna sweeper instantiates this from ``hydra.sweeper.sampler`` (its ``_target_``),
passing TPE's settings (seed, n_startup_trials, ...), which go to the TPE sampler underneath.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution

from ascend_lab.config import AppConfig
from ascend_lab.config.runtime import RuntimeConfig
from ascend_lab.errors import ConfigError
from ascend_lab.runtimes.registry import RUNTIME_CONFIGS

PARAMS_KEY = "hydra.sweeper.params"


def default_of(key: str) -> Any:
    """The schema default of a dotted config key (``runtime.intra_op_threads`` → 0). A ``runtime.*`` key is read
    from the runtime config that has it (the runtimes that share a key share its default)."""
    node: Any = AppConfig()
    for part in key.split("."):
        if isinstance(node, RuntimeConfig) and part not in {f.name for f in dataclasses.fields(node)}:
            node = next((schema() for schema in RUNTIME_CONFIGS.values()
                         if part in {f.name for f in dataclasses.fields(schema)}), node)
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ConfigError(f"{PARAMS_KEY}.{key}", key, "is not a config key; `python -m ascend_lab.run --cfg job` "
                                                         "lists them")
        node = getattr(node, part)
    return node.value if isinstance(node, Enum) else node


class DefaultsFirstSampler(optuna.samplers.BaseSampler):
    """TPE, except that trial 0 is the default configuration (see the module docstring)."""

    def __init__(self, **tpe_settings: Any) -> None:
        self._tpe = optuna.samplers.TPESampler(**tpe_settings)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return {} if trial.number == 0 else self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if trial.number != 0:
            return self._tpe.sample_independent(study, trial, param_name, param_distribution)
        value = default_of(param_name)
        if isinstance(param_distribution, CategoricalDistribution):
            if value in param_distribution.choices:
                return value
        elif param_distribution._contains(param_distribution.to_internal_repr(value)):
            return value
        raise ConfigError(f"{PARAMS_KEY}.{param_name}", value,
                          "the searched values must include the default, which the first trial measures as the "
                          "baseline; add it to the choices or the range")

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)
