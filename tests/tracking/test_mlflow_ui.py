"""MLflow UI: the printed link opens the experiment's runs table, stage runs carry their params, and
(where Chromium exists) a real browser shows the runs table and plots batch size against throughput.

MLflow 3.17's UI opens ``#/experiments/<id>`` on its GenAI overview ("0 traces"); the link names the
runs tab and ``workflowType=machine_learning`` (see :mod:`ascend_lab.tracking.ui`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from browser_helpers import UI_TIMEOUT_S, free_port, shots_folder, wait_for_text
from conftest import FAST_PIPELINE, all_runs, run_cli_in

from ascend_lab.config.tracking import TrackingConfig
from ascend_lab.tracking import browse_hint, prepare_store, runs_table_url
from ascend_lab.tracking.ui import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

# The expand button of a parent run's name cell in MLflow 3.17's runs table.
EXPAND_CHILD_RUNS = "button[data-component-id*='runnamecellrenderer']"
HINT = re.compile(r"browse the runs: mlflow ui --backend-store-uri (\S+)  then open (\S+)")


def test_runs_table_link_names_the_runs_tab_and_the_training_view():
    assert runs_table_url("7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert runs_table_url("7", "http://srv:5000/") == \
        "http://srv:5000/#/experiments/7/runs?workflowType=machine_learning"


def test_browse_hint_serves_the_store_and_links_the_runs_table(tmp_path):
    local = browse_hint(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", "3", tmp_path)
    assert local == ("browse the runs: mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db  then open "
                     "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning")
    elsewhere = browse_hint("sqlite:////data/mlflow.db", "3", tmp_path)
    assert "--backend-store-uri sqlite:////data/mlflow.db " in elsewhere
    assert browse_hint("http://srv:5000", "3") == \
        "browse the runs: open http://srv:5000/#/experiments/3/runs?workflowType=machine_learning"


def test_experiments_are_tagged_as_model_training(tmp_path):
    from mlflow import MlflowClient

    store = prepare_store(TrackingConfig(), tmp_path)
    client = MlflowClient(tracking_uri=store.uri)
    assert client.get_experiment(store.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # An experiment made before (no tag) gets it; a kind the user chose is kept.
    old = client.create_experiment("old")
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    prepare_store(TrackingConfig(experiment="old"), tmp_path)
    prepare_store(TrackingConfig(experiment="chosen"), tmp_path)
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


@pytest.fixture(scope="module")
def pipeline_store(tmp_path_factory):
    """(launch dir, CLI stdout) of one real pipeline run (`python -m ascend_lab.run`) with the default
    stages and batch sizes (1, 4, 8), each stage measuring only a little; telemetry is not under test here."""
    launch = tmp_path_factory.mktemp("pipeline")
    proc = run_cli_in(launch, *FAST_PIPELINE, "telemetry=off", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return launch, proc.stdout


def _stages(launch: Path) -> dict:
    _, runs = all_runs(launch)
    (pipeline,) = [r for r in runs if r.data.tags.get("task") == "pipeline"]
    return {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id}


@pytest.mark.slow
def test_pipeline_stage_runs_carry_the_params_of_their_task(pipeline_store):
    launch, stdout = pipeline_store
    stages = _stages(launch)
    bench = {name: run for name, run in stages.items() if name.startswith("bench b=")}
    assert sorted(int(r.data.params["benchmark.batch_size"]) for r in bench.values()) == [1, 4, 8]
    for run in bench.values():
        assert run.data.params["task"] == "bench" and "runtime.name" in run.data.params
        assert not any(key.startswith(("mnist.", "doctor.", "tracking.")) for key in run.data.params)
    doctor = stages["doctor"].data.params
    assert doctor["task"] == "doctor" and "doctor.matmul_size" in doctor and "benchmark.batch_size" not in doctor
    assert all("pid" in run.data.tags and "host" in run.data.tags for run in stages.values())
    (hint,) = HINT.findall(stdout)
    experiment_id = next(iter(stages.values())).info.experiment_id
    assert hint == ("sqlite:///outputs/mlflow.db", runs_table_url(experiment_id))


# ----------------------------------------------------------------------------------------------
# The real browser


@pytest.fixture
def mlflow_ui(pipeline_store):
    """The UI served as the hint says (`mlflow ui --backend-store-uri ...` in the launch directory) on a
    free port; yields the hint's link with that port."""
    launch, stdout = pipeline_store
    ((store_uri, link),) = HINT.findall(stdout)
    port = free_port()
    log = (launch / "mlflow-ui.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store_uri,
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=launch, stdout=log, stderr=subprocess.STDOUT)
    address = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (launch / "mlflow-ui.log").read_text()
            try:
                with urllib.request.urlopen(address + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (launch / "mlflow-ui.log").read_text()
            time.sleep(0.5)
        yield launch, link.replace("http://127.0.0.1:5000", address), address
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _choose(driver, selector_id: str, option: str) -> None:
    """Pick ``option`` in one of the compare page's dropdowns (a listbox of role=option items)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, selector_id).click()
    item = WebDriverWait(driver, UI_TIMEOUT_S).until(lambda d: next(
        (o for o in d.find_elements(By.CSS_SELECTOR, "[role=option]") if o.text.strip() == option), None))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", item)
    item.click()
    WebDriverWait(driver, UI_TIMEOUT_S).until(
        lambda d: d.find_element(By.ID, selector_id).get_attribute("value").endswith(option))


@pytest.mark.slow
def test_the_printed_link_opens_the_runs_table_and_compare_plots_batch_size(browser, mlflow_ui, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    launch, link, address = mlflow_ui
    shots = shots_folder(tmp_path)

    browser.get(link)
    body = wait_for_text(browser, "pipeline")
    assert "Run Name" in body and "matching runs" in body, body[:2000]
    assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
    assert "No data available for the selected time range" not in body  # not the GenAI overview
    # The pipeline run is the table's one top-level row; its expander shows the stage runs.
    browser.find_element(By.CSS_SELECTOR, EXPAND_CHILD_RUNS).click()
    body = wait_for_text(browser, "bench b=8")
    assert all(stage in body for stage in ("doctor", "export", "compile", "bench b=1", "bench b=4")), body
    browser.save_screenshot(str(shots / "runs_table.png"))

    stages = _stages(launch)
    bench = sorted((r for name, r in stages.items() if name.startswith("bench b=")),
                   key=lambda r: int(r.data.params["benchmark.batch_size"]))
    ids = [r.info.run_id for r in bench]
    # The compare page MLflow opens for selected runs (its getCompareRunPageRoute).
    browser.get(f"{address}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([bench[0].info.experiment_id])}")
    wait_for_text(browser, "Scatter Plot")
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Scatter Plot']").click()
    _choose(browser, "x-axis-selector", "benchmark.batch_size")
    _choose(browser, "y-axis-selector", "throughput_tokens_s")
    read_plot = "const p = document.querySelector('.js-plotly-plot'); return p && p.data && JSON.stringify(p.data)"
    traces = json.loads(WebDriverWait(browser, UI_TIMEOUT_S).until(lambda d: d.execute_script(read_plot)))
    plotted = sorted(zip(map(int, traces[0]["x"]), traces[0]["y"]))
    expected = [(int(r.data.params["benchmark.batch_size"]), r.data.metrics["throughput_tokens_s"]) for r in bench]
    assert [x for x, _ in plotted] == [x for x, _ in expected] == [1, 4, 8]
    assert [y for _, y in plotted] == pytest.approx([y for _, y in expected])
    browser.save_screenshot(str(shots / "compare_batch_size_vs_throughput.png"))
