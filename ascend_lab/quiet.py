"""Our output only: third-party log lines and progress bars stay quiet unless ``verbose=true``.

At the default verbosity the libraries a job drives keep their warnings and errors but not their
progress reports: onnxruntime's transformer optimizer (one INFO line per fusion, from modules it
imports under their bare file names, e.g. ``onnx_model_bert``), MLflow's store set-up ("Creating
initial MLflow database tables...") and its artifact-download progress bar, alembic's plugin set-up
under Optuna, Optuna's coloured study line, matplotlib's font cache, and the torch profiler's
device probe on a CPU-only host (``gpuGetDeviceCount failed``, printed by libkineto itself).

Nothing leaves the host unasked either: MLflow 3 fetches its usage-telemetry config from the
internet when a client starts unless ``MLFLOW_DISABLE_TELEMETRY`` (or ``DO_NOT_TRACK``) is set
(mlflow/telemetry/utils.py ``is_telemetry_disabled``). We set it for our processes, which their
children inherit; a user who sets either variable themselves (``MLFLOW_DISABLE_TELEMETRY=false``
opts in) keeps their choice.

``apply`` runs at the command line's start (before Hydra, MLflow or Optuna log anything) and again
with the composed config's ``verbose``; each logger keeps its own level, so the libraries' own
start-up configuration (which sets only their root logger's level) does not undo it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Sequence

# Loggers whose INFO lines are progress reports, not results.
THIRD_PARTY_LOGGERS = (
    "alembic",  # "setup plugin alembic.autogenerate.*" when Optuna's RDB storage imports it
    "mlflow",  # the store's "Creating initial MLflow database tables...", sampler start/stop
    "optuna.storages", "optuna.study",  # "A new study created in memory ...", in ANSI colours
    "matplotlib",  # "generated new fontManager" on first use
    "onnxruntime",
)
# Environment variables read by the libraries themselves (at import, or at first use).
QUIET_ENVIRONMENT = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # read once when mlflow is imported
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# Read by the torch profiler's libkineto when its first session starts; 6 is past its last level (USDT).
KINETO_QUIET = {"KINETO_LOG_LEVEL": "6"}
OFFLINE_ENVIRONMENT = {"MLFLOW_DISABLE_TELEMETRY": "true"}
# Variables by which a user has already said whether usage data may leave the host.
TELEMETRY_CHOICES = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
_TRUE_WORDS = ("true", "yes", "on", "1")

_verbose = False


def onnxruntime_transformer_loggers() -> list[str]:
    """The logger names of onnxruntime's transformer optimizer: its modules log under their file names
    (the package puts its own folder on sys.path). Found without importing onnxruntime."""
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0]) / "transformers"
    return sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")


def verbose_asked(overrides: Sequence[str]) -> bool:
    """Whether the command line sets ``verbose`` to true (before Hydra has composed anything)."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "verbose":
            return value.strip().lower() in _TRUE_WORDS
    return False


def apply(verbose: bool) -> None:
    """Quiet (or, with ``verbose``, restore) the third-party loggers; set the offline environment."""
    global _verbose
    _verbose = verbose
    if not any(name in os.environ for name in TELEMETRY_CHOICES):
        os.environ.update(OFFLINE_ENVIRONMENT)
    level = logging.NOTSET if verbose else logging.WARNING
    for name in (*THIRD_PARTY_LOGGERS, *onnxruntime_transformer_loggers()):
        logging.getLogger(name).setLevel(level)
    if verbose:
        for name in QUIET_ENVIRONMENT:
            if os.environ.get(name) == QUIET_ENVIRONMENT[name]:
                del os.environ[name]
        logging.getLogger("mlflow").setLevel(logging.INFO)  # MLflow's own default
    else:
        for name, value in QUIET_ENVIRONMENT.items():
            os.environ.setdefault(name, value)


def quiet_profiler_probe() -> None:
    """Before a CPU-only torch profiler session: libkineto probes for GPUs and prints its failure."""
    if not _verbose:
        for name, value in KINETO_QUIET.items():
            os.environ.setdefault(name, value)

