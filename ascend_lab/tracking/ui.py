"""What the MLflow UI needs from us: the experiment's kind and a link straight to its runs table.

MLflow 3's UI has two faces, "GenAI" (traces, an overview page) and "Model training" (the runs
table, charts, compare view). Which one an experiment opens on is decided in the browser:

- MLflow 3.17's UI takes the ``workflowType`` query parameter of the page's URL (``genai`` or
  ``machine_learning``), else the last choice stored in the browser, else ``genai``; a plain
  ``#/experiments/<id>`` link therefore lands on the GenAI overview ("0 traces").
- Earlier 3.x UIs read the experiment tag ``mlflow.experimentKind`` instead.

So the experiment is created with the tag, and the printed link names the runs tab and the
workflow type. The hash route and parameter are those of MLflow 3.17's ``server/js`` bundle
(routes ``/experiments/:id/runs``, ``workflowType``); ``tests/tracking/test_mlflow_ui.py`` opens the link in
headless Chromium and checks the runs table shows.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# The UI's name for "Model training" experiments (the other kind is "genai_development").
EXPERIMENT_KIND = "custom_model_development"
WORKFLOW_TYPE = "machine_learning"
# Where `mlflow ui` / `mlflow server` listen unless told otherwise.
DEFAULT_UI_ADDRESS = "http://127.0.0.1:5000"
SQLITE_PREFIX = "sqlite:///"


def experiment_tags() -> dict[str, str]:
    """Tags a new experiment gets so MLflow's UI shows it as model training (the runs table)."""
    return {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}


def runs_table_url(experiment_id: str, address: str = DEFAULT_UI_ADDRESS) -> str:
    """The UI page with the experiment's runs table (not the GenAI overview)."""
    query = urlencode({"workflowType": WORKFLOW_TYPE})
    return f"{address.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def browse_hint(store_uri: str, experiment_id: str, launch_dir: Path | None = None) -> str:
    """The command that serves the store (none for a server) and the link to open.

    A SQLite store inside ``launch_dir`` is named relative to it, which is where the user is.
    """
    if store_uri.startswith(("http://", "https://")):
        return f"browse the runs: open {runs_table_url(experiment_id, store_uri)}"
    uri = store_uri
    if uri.startswith(SQLITE_PREFIX) and launch_dir is not None:
        path = Path(uri[len(SQLITE_PREFIX):])
        if path.is_absolute() and path.is_relative_to(launch_dir.resolve()):
            uri = SQLITE_PREFIX + str(path.relative_to(launch_dir.resolve()))
    return f"browse the runs: mlflow ui --backend-store-uri {uri}  then open {runs_table_url(experiment_id)}"
