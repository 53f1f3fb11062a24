"""The one interface task code logs through (:class:`Tracker`), its MLflow form, and :func:`ending`.

Tasks never import mlflow: they receive a tracker from the job context. ``tracking=off`` gives the
base class, which records nothing, so every task runs the same with or without a store.
"""

from __future__ import annotations

import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ascend_lab.tracking.client import FAILED, FINISHED, KILLED, PARENT_TAG, RUNNING, with_lock_retries
from ascend_lab.tracking.owner import owner_tags

# MLflow caps a param value at 6000 characters and a tag value at 8000; longer values are cut.
PARAM_VALUE_MAX = 6000
TAG_VALUE_MAX = 8000
# log_batch takes at most 100 params per call.
PARAMS_PER_BATCH = 100


class Tracker:
    """What tasks call to record a run. This base form records nothing (``tracking=off``)."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, Any]) -> None: ...

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        """Log a file, or a folder's contents, under ``artifact_path``."""

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None: ...

    def log_figure(self, figure: Any, artifact_file: str) -> None: ...

    def log_model(self, flavor: str, model: Any, name: str, **kwargs: Any) -> str | None:
        """Log a model with an MLflow flavor (``pytorch``, ``onnx``); returns its model URI."""
        return None

    def end(self, status: str, error: str | None = None) -> None: ...

    @contextmanager
    def child(self, run_name: str, tags: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None) -> Iterator["Tracker"]:
        """A nested run (MLflow child) for one stage, with its own ``params`` (MLflow's compare view
        plots params against metrics, so a stage that varies a value logs it); ends with the block's
        outcome."""
        yield Tracker()


class MlflowTracker(Tracker):
    """A tracker writing one MLflow run through ``client`` (every call retried on SQLite locks)."""

    def __init__(self, client, run_id: str, experiment_id: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id

    def _call(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        return with_lock_retries(fn, *args, **kwargs)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self._call(self.client.log_batch, self.run_id, params=items[i:i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        if items:
            self._call(self.client.log_batch, self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:TAG_VALUE_MAX]) for k, v in tags.items() if v is not None]
        if items:
            self._call(self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        local_path = Path(local_path)
        if local_path.is_dir():
            self._call(self.client.log_artifacts, self.run_id, str(local_path), artifact_path)
        else:
            self._call(self.client.log_artifact, self.run_id, str(local_path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(self.client.log_text, self.run_id, text, artifact_file)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        self._call(self.client.log_dict, self.run_id, dict(dictionary), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self._call(self.client.log_figure, self.run_id, figure, artifact_file)

    def log_model(self, flavor: str, model: Any, name: str, **kwargs: Any) -> str | None:
        import importlib

        import mlflow

        flavor_module = importlib.import_module(f"mlflow.{flavor}")
        # The flavors log through the fluent API, which uses the global tracking URI (else a default
        # ./mlflow.db where this run does not exist) and the active run's experiment for the
        # LoggedModel: point both at this run for the call.
        was_set, previous_uri = mlflow.is_tracking_uri_set(), mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.client.tracking_uri)
        try:
            with mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None):
                info = flavor_module.log_model(model, name=name, **kwargs)
            # Leaving start_run's block marked the run FINISHED; the job's outcome decides that.
            self._call(self.client.update_run, self.run_id, status=RUNNING)
        finally:
            mlflow.set_tracking_uri(previous_uri if was_set else None)
        return info.model_uri

    def end(self, status: str, error: str | None = None) -> None:
        if error:
            self.set_tags({"error": error})
        self._call(self.client.set_terminated, self.run_id, status)

    @contextmanager
    def child(self, run_name: str, tags: Mapping[str, Any] | None = None,
              params: Mapping[str, Any] | None = None) -> Iterator[Tracker]:
        # The owner tags let a later job end this run if this process dies inside the block.
        run = self._call(self.client.create_run, self.experiment_id, run_name=run_name,
                         tags={PARENT_TAG: self.run_id, **owner_tags(), **{k: str(v) for k, v in (tags or {}).items()}})
        child = MlflowTracker(self.client, run.info.run_id, self.experiment_id)
        with ending(child):
            if params:
                child.log_params(params)
            yield child


@contextmanager
def ending(tracker: Tracker) -> Iterator[Tracker]:
    """End ``tracker``'s run with the block's outcome: FINISHED, FAILED (error recorded) or KILLED."""
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.end(KILLED, "interrupted (KeyboardInterrupt)")
        raise
    except BaseException as exc:
        tracker.end(FAILED, "".join(traceback.format_exception_only(type(exc), exc)).strip())
        raise
    else:
        tracker.end(FINISHED)


def _param_value(value: Any) -> str:
    text = "None" if value is None else str(value)
    return text if len(text) <= PARAM_VALUE_MAX else text[:PARAM_VALUE_MAX - 3] + "..."
