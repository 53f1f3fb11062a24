"""Shared fixtures: run the real CLI in a temporary launch directory and read the real MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
FAKES = Path(__file__).resolve().parent / "fakes"
# The stand-in atc names the .om after the host's arch, as ATC does; tests that spell the name assume x86_64,
# so the suite reads the same on a Kunpeng (aarch64) host. Tests of the arch itself set it themselves.
os.environ.setdefault("FAKE_ATC_HOST_ARCH", "x86_64")


def load_torch_runtime(cfg=None, device=None, **runtime_keys):
    """runtime=torch for ``cfg`` (an AppConfig; default: the defaults) on ``device`` (default: the CPU), with
    ``runtime_keys`` of :class:`TorchRuntimeConfig` set: the model and runtime config it receives, as the CLI
    passes them."""
    from ascend_lab.config import AppConfig
    from ascend_lab.device import Device
    from ascend_lab.models import ModelSource
    from ascend_lab.runtimes.torch.config import TorchRuntimeConfig
    from ascend_lab.runtimes.torch.runtime import TorchRuntime

    cfg = cfg or AppConfig()
    source = ModelSource(cfg.model, cfg.seed, cfg.export.graph, cfg.export.layer_outputs)
    return TorchRuntime.load(TorchRuntimeConfig(**runtime_keys), source, device or Device("cpu", 0, "test"))


def cli_env(extra_path: list[Path] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONUNBUFFERED"] = "1"
    if extra_path:
        env["PATH"] = os.pathsep.join([*map(str, extra_path), env.get("PATH", "")])
    return env


def stand_in_env(leaks_file: Path | None = None, **extra: str) -> dict[str, str]:
    """The CLI's environment with the CANN stand-ins: the fake ``atc``/``aoe``/``npu-smi`` on PATH and the
    pyACL simulator importable as ``acl``; ``leaks_file``: where the simulator reports what a run left
    unreleased; ``extra``: more variables (e.g. ``ASCEND_LAB_SIM_CHIP``)."""
    env = cli_env([FAKES / "bin"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAKES / "pyacl"), env.get("PYTHONPATH")]))
    if leaks_file is not None:
        env["ASCEND_LAB_SIM_LEAKS_FILE"] = str(leaks_file)
    env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_path):
    """``run_cli(*overrides, cwd=tmp_path, timeout=...)`` → CompletedProcess of the real CLI."""

    def _run(*overrides: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
             path_prepend: list[Path] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ascend_lab.run", *overrides],
            cwd=cwd or tmp_path, capture_output=True, text=True, timeout=timeout,
            env=env or cli_env(path_prepend),
        )

    return _run


def mlflow_client(launch_dir: Path):
    from mlflow import MlflowClient

    db = launch_dir / "outputs" / "mlflow.db"
    assert db.is_file(), f"no MLflow store at {db}"
    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def all_runs(launch_dir: Path, experiment: str = "ascend_lab"):
    client = mlflow_client(launch_dir)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing"
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture
def mlflow_runs():
    """``mlflow_runs(launch_dir)`` → (client, list of runs) from the store a CLI run wrote."""
    return all_runs


@pytest.fixture
def compose():
    """``compose(*overrides)`` → the composed DictConfig, through Hydra's compose API."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ascend_lab.runtimes.registry import register_configs

    register_configs()

    def _compose(*overrides: str, return_hydra_config: bool = False):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides),
                                 return_hydra_config=return_hydra_config)

    return _compose


@pytest.fixture
def sim(monkeypatch):
    """The pyACL simulator (``tests/fakes/pyacl``) imported as ``acl`` for this test only, with fresh state;
    after the test, no runtime may still be a user of pyACL (every path releases what it took; ``acl.init``
    itself stays for the process's life, ascend_lab.runtimes.acl.pyacl)."""
    from ascend_lab.runtimes.acl import pyacl

    def forget_acl() -> None:
        for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]:
            del sys.modules[name]

    monkeypatch.syspath_prepend(str(FAKES / "pyacl"))
    forget_acl()
    import acl

    acl._sim.reset()
    yield acl
    forget_acl()
    users = pyacl._init_users
    restart_simulated_process(None)
    assert users == 0, "a runtime was left open"


def restart_simulated_process(acl, **reset) -> None:
    """What a new process would see: the pyACL simulator ``acl`` reset with ``reset`` (e.g. another
    ``cann_version``; None: leave it) and ascend_lab's per-process ``acl.init`` record forgotten (a fresh
    simulator is a fresh process as far as pyACL can tell, and the exit hook then does nothing)."""
    from ascend_lab.runtimes.acl import pyacl

    if acl is not None:
        acl._sim.reset(**reset)
    pyacl._init_users, pyacl._init_owned, pyacl._init_module = 0, False, None


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by selenium; the test is skipped, with the reason, where none exists."""
    from browser_helpers import BROWSER_FLAGS, CHROMEDRIVER, CHROMIUM, browser_missing

    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
