"""Shared fixtures: run the real CLI in a temporary launch directory and read the real MLflow store.

The CLI runs inside the pytest worker (:func:`run_cli_in`) unless the process itself is what a test checks:
a fresh interpreter per run would cost more than most runs' work. Everything a run could leave behind in
the worker is put back after it, so each run sees what a fresh ``python -m ascend_lab.run`` would see.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import importlib
import io
import logging
import os
import pkgutil
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path
from typing import Callable, Iterator

import pytest

_subprocess_module = subprocess  # run_cli_in's keyword ``subprocess`` hides the module there

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
FAKES = Path(__file__).resolve().parent / "fakes"
# The roofline's bandwidth measured over a small array (flagged as cache-served, tag roofline.bandwidth_fits=false):
# for generate jobs whose roofline figures are recorded but not what is tested. The default array of 1 GB is
# read a few dozen times per launch directory.
SMALL_BANDWIDTH = "telemetry.bandwidth_array_gb=0.02"
# Overrides that keep a pipeline's stages short (few timed rounds, a tiny matmul, a small bandwidth array) where
# what is asserted is which stage runs exist and what they record, not their figures.
FAST_PIPELINE = ("benchmark.warmup=1", "benchmark.iterations=3", "benchmark.min_duration_s=0",
                 "doctor.matmul_size=64", "doctor.repeats=2", "doctor.warmup=1", SMALL_BANDWIDTH)
# The stand-in atc names the .om after the host's arch, as ATC does; tests that spell the name assume x86_64,
# so the suite reads the same on a Kunpeng (aarch64) host. Tests of the arch itself set it themselves.
os.environ.setdefault("FAKE_ATC_HOST_ARCH", "x86_64")
# OpenMP threads (torch's intra-op pool, here and in every process a test starts) sleep as soon as they wait
# instead of spinning first (OMP_WAIT_POLICY, https://gcc.gnu.org/onlinedocs/libgomp/OMP_005fWAIT_005fPOLICY.html):
# the suite runs one worker per core and each torch uses every core, so a spinning thread holds a core that
# another process's thread is waiting for. What a run computes is the same; set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _sqlite_without_fsync(dbapi_connection, _record) -> None:
    """SQLite in this process (the in-process CLI runs' MLflow stores, the tests' readers) skips fsync
    (``PRAGMA synchronous=OFF``, https://www.sqlite.org/pragma.html#pragma_synchronous): a fresh store's schema
    migrations and every logged figure commit without waiting on a shared disk. Locking, what is written and
    what a killed process leaves are SQLite's as usual; only durability against power loss, which no test
    checks, differs. Runs in child processes keep SQLite's default."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        import sqlite3

        # A file that is not a database fails here already: leave it to fail where it would without this
        # (a failed connect makes MLflow retry the engine for seconds).
        with contextlib.suppress(sqlite3.DatabaseError):
            dbapi_connection.execute("PRAGMA synchronous=OFF")


def _register_sqlite_without_fsync() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _sqlite_without_fsync):
        event.listen(Engine, "connect", _sqlite_without_fsync)


_register_sqlite_without_fsync()

# A copy of the tables MLflow makes in a new SQLite store (its schema migrations run once per worker, here).
_store_template: Path | None = None


def _use_a_store_template() -> None:
    """MLflow makes a new SQLite store's tables by running its schema migrations, about a second of CPU per store;
    in this process a new store whose file holds no table yet gets a copy of the tables those migrations made for
    the first store instead (SQLite's online backup, https://www.sqlite.org/backup.html). What the store holds
    afterwards is the same: tables at MLflow's head revision and no rows, MLflow then adding its default experiment
    as usual. A file that already holds tables (a half-created store) meets MLflow's own migrations, as it would
    elsewhere, and so does every store a child process creates."""
    from mlflow.store.db import utils
    from sqlalchemy import inspect

    migrate = utils._initialize_tables

    def initialize_tables(engine) -> None:
        global _store_template
        if engine.url.get_backend_name() != "sqlite" or inspect(engine).get_table_names():
            return migrate(engine)
        if _store_template is None:
            template = Path(tempfile.mkdtemp(prefix="mlflow-store-template-")) / "mlflow.db"
            template_engine = utils.create_sqlalchemy_engine_with_retry(f"sqlite:///{template}")
            migrate(template_engine)
            template_engine.dispose()  # only read from here on, by the backups below
            _store_template = template
        import sqlite3

        raw = engine.raw_connection()
        try:
            with contextlib.closing(sqlite3.connect(_store_template)) as source:
                source.backup(raw.driver_connection)
        finally:
            raw.close()

    utils._initialize_tables = initialize_tables


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


def run_cli_in(launch_dir: Path, *overrides: str, timeout: float = 600, env: dict | None = None,
               path_prepend: list[Path] | None = None, subprocess: bool = False) -> "subprocess.CompletedProcess":
    """``python -m ascend_lab.run *overrides`` launched from ``launch_dir``: its exit status, stdout and stderr.

    ``env``: the whole environment (default :func:`cli_env`, with ``path_prepend`` first on PATH).
    ``subprocess=True``, or a launcher other than Hydra's basic one, runs it in a fresh interpreter; otherwise
    it runs in this process through the same entry point (see :func:`_in_process`)."""
    env = env or cli_env(path_prepend)
    if subprocess or _launcher_starts_processes(overrides):
        return _subprocess_module.run([sys.executable, "-m", "ascend_lab.run", *overrides], cwd=launch_dir,
                                      capture_output=True, text=True, timeout=timeout, env=env)
    return _in_process(launch_dir, list(overrides), env, timeout)


@pytest.fixture
def run_cli(tmp_path):
    """``run_cli(*overrides, cwd=tmp_path, timeout=..., env=..., path_prepend=..., subprocess=False)`` → the
    CompletedProcess of the real CLI (:func:`run_cli_in`)."""

    def _run(*overrides: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
        return run_cli_in(cwd or tmp_path, *overrides, **kwargs)

    return _run


def _launcher_starts_processes(overrides) -> bool:
    """Whether a Hydra launcher other than ``basic`` runs the jobs: its workers (joblib's reusable pool,
    submitit's) live outside this process, so the run must start from a fresh one, as a user's does."""
    return any(o.startswith("hydra/launcher=") and o.partition("=")[2] != "basic" for o in overrides)


def _in_process(launch_dir: Path, argv: list[str], env: dict[str, str], timeout: float):
    from ascend_lab import run

    _warm_up()
    with _captured_output() as output, _process_state_restored(launch_dir, env), _package_state_fresh():
        # A hung run stops the worker with every thread's stack, as the subprocess timeout would stop it.
        faulthandler.dump_traceback_later(timeout, exit=True, file=output.original_stderr)
        exit_handlers: list[Callable[[], object]] = []
        try:
            with _exit_handlers_collected(exit_handlers):
                sys.argv = [run.__file__, *argv]
                returncode = _exit_status(run.main)
            for handler in reversed(exit_handlers):  # the interpreter's exit, as atexit runs them
                try:
                    handler()
                except BaseException:  # noqa: BLE001 - atexit reports it and keeps the exit status
                    print(f"Exception ignored in atexit callback {handler!r}:", file=sys.stderr)
                    traceback.print_exc()
        finally:
            faulthandler.cancel_dump_traceback_later()
    return subprocess.CompletedProcess([sys.executable, "-m", "ascend_lab.run", *argv], returncode,
                                       output.stdout, output.stderr)


def _exit_status(func: Callable[[], object]) -> int:
    """What the interpreter would exit with, had ``func`` been its program."""
    try:
        func()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - the interpreter prints any other exception and exits 1
        traceback.print_exc()
        return 1
    return 0


_warm = False
# The package's module globals as a fresh interpreter has them (see _warm_up).
_fresh_globals: dict[str, dict[str, object]] = {}


def _warm_up() -> None:
    """Import the whole package once and note its module globals as they are on import. Importing everything
    first means a registry filled at import time is complete in the note."""
    global _warm
    if _warm:
        return
    import ascend_lab
    import mlflow  # noqa: F401 - configures its loggers at import, before any run notes the logging state

    _use_a_store_template()

    for module in pkgutil.walk_packages(ascend_lab.__path__, "ascend_lab."):
        if not module.name.endswith("__main__"):
            with contextlib.suppress(ImportError):
                importlib.import_module(module.name)
    _fresh_globals.update(_package_globals())
    _warm = True


def _package_globals() -> dict[str, dict[str, object]]:
    return {name: {key: _copied(value) for key, value in vars(module).items()}
            for name, module in list(sys.modules.items()) if name == "ascend_lab" or name.startswith("ascend_lab.")}


def _copied(value: object) -> object:
    return value.copy() if type(value) in (set, dict, list) else value


def _set_globals(noted: dict[str, dict[str, object]], private_only: bool = False) -> None:
    """Give the package's module globals the ``noted`` values; containers are refilled in place, since other
    modules may hold the same object."""
    for name, values in noted.items():
        module = vars(sys.modules.get(name, object()))
        for key, value in values.items():
            if private_only and not key.startswith("_"):
                continue
            current = module.get(key)
            if type(value) in (set, dict, list) and type(current) is type(value):
                if current != value:
                    current.clear()
                    current.extend(value) if isinstance(value, list) else current.update(value)
            elif current is not value:
                module[key] = value


@contextlib.contextmanager
def _package_state_fresh() -> Iterator[None]:
    """A run starts with the package's private module state (``_warned`` sets, counters, the active telemetry
    session) as a fresh interpreter has it, and leaves every module global as it found it, a test's patches
    included."""
    before = _package_globals()
    _set_globals(_fresh_globals, private_only=True)
    try:
        yield
    finally:
        _set_globals(before)


@contextlib.contextmanager
def _process_state_restored(launch_dir: Path, env: dict[str, str]) -> Iterator[None]:
    """The run's working directory, environment and ``sys.path`` (its PYTHONPATH first, as the interpreter
    puts it), with the pyACL simulator imported afresh if it is on that path; afterwards all of it, the
    logging setup Hydra configures, Hydra's and MLflow's globals, torch's and the package's module
    state are as before."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from ascend_lab.tracking import SweepCallback

    saved_cwd, saved_env, saved_argv = os.getcwd(), dict(os.environ), sys.argv
    saved_stdin, saved_logging, saved_acl = sys.stdin, _logging_state(), _forget_acl()
    torch = sys.modules.get("torch")
    saved_torch = (torch.get_num_threads(), torch.get_default_dtype(), torch.random.get_rng_state()) if torch else None
    GlobalHydra.instance().clear()
    os.chdir(launch_dir)
    os.environ.clear()
    os.environ.update(env)
    # Only these are taken out afterwards: a library may add to sys.path on its first import (onnxruntime.transformers
    # appends its own folder and imports its modules by bare name), and a later run must still find them.
    prepended = [p for p in dict.fromkeys(env.get("PYTHONPATH", "").split(os.pathsep)) if p and p not in sys.path]
    sys.path[:0] = prepended
    importlib.invalidate_caches()
    sys.stdin = open(os.devnull)  # noqa: SIM115 - closed below
    try:
        with warnings.catch_warnings():
            _fresh_warnings()
            yield
    finally:
        _end_mlflow_runs()
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
        SweepCallback.interrupted = False
        _restore_logging(saved_logging)
        if saved_torch:
            torch.set_num_threads(saved_torch[0])
            torch.set_default_dtype(saved_torch[1])
            torch.random.set_rng_state(saved_torch[2])
        _forget_acl()
        sys.modules.update(saved_acl)
        sys.stdin.close()
        sys.stdin, sys.argv = saved_stdin, saved_argv
        for path in prepended:
            if path in sys.path:
                sys.path.remove(path)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def _fresh_warnings() -> None:
    """Python's default warning filters, and warnings printed on stderr, as in a fresh interpreter (pytest's
    filters and its recording of warnings stay with the tests)."""
    warnings.resetwarnings()
    for action, category in (("ignore", ResourceWarning), ("ignore", ImportWarning),
                             ("ignore", PendingDeprecationWarning), ("ignore", DeprecationWarning)):
        warnings.simplefilter(action, category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = warnings._showwarning_orig
    warnings._showwarnmsg_impl = lambda msg: (msg.file or sys.stderr).write(warnings._formatwarnmsg(msg))


def _forget_acl() -> dict[str, object]:
    """Drop pyACL (the simulator, or nothing) from ``sys.modules`` so the next ``import acl`` finds it afresh on
    the path in force; returns what was dropped."""
    return {name: sys.modules.pop(name) for name in [m for m in sys.modules if m == "acl" or m.startswith("acl.")]}


def _end_mlflow_runs() -> None:
    """MLflow's fluent active runs and tracking URI do not outlive a process: end and unset them."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _logging_state() -> tuple:
    loggers = {name: logger for name, logger in logging.Logger.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    return (logging.root.level, list(logging.root.handlers),
            {name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
             for name, logger in loggers.items()})


def _restore_logging(saved: tuple) -> None:
    """Hydra configures the root logger (console and ``<job>.log`` handlers) per job: close what the run added
    and put back the levels and handlers each logger had. Loggers first created in the run keep their own."""
    root_level, root_handlers, loggers = saved
    for handler in logging.root.handlers:
        if handler not in root_handlers:
            handler.close()
    logging.root.handlers[:] = root_handlers
    logging.root.setLevel(root_level)
    for name, (level, handlers, propagate, disabled) in loggers.items():
        logger = logging.getLogger(name)
        if logger.level != level:  # setLevel clears every logger's cache: only where a run changed it
            logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


@contextlib.contextmanager
def _exit_handlers_collected(handlers: list[Callable[[], object]]) -> Iterator[None]:
    """``atexit.register`` calls of the package and of the pyACL simulator (a sweep closing its parent run, the
    simulator's leak report) go to ``handlers``, run when the CLI's program ends; others register as usual."""
    real_register = atexit.register

    def register(func, *args, **kwargs):
        module = getattr(func, "__module__", "") or ""
        if module.startswith("ascend_lab") or module == "acl" or module.startswith("acl."):
            handlers.append(lambda: func(*args, **kwargs))
            return func
        return real_register(func, *args, **kwargs)

    atexit.register = register
    try:
        yield
    finally:
        atexit.register = real_register


class _Output:
    stdout = stderr = ""
    original_stderr: io.TextIOBase


@contextlib.contextmanager
def _captured_output() -> Iterator[_Output]:
    """stdout and stderr of the run, at the file descriptors too (a library's C code, a child process that
    inherits them), in the order written: each stream is one file opened for appending."""
    output = _Output()
    with tempfile.TemporaryDirectory(prefix="cli-output-") as folder:
        saved_streams, saved_fds, paths = (sys.stdout, sys.stderr), [], []
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()
        try:
            for fd, name, errors in ((1, "stdout", "strict"), (2, "stderr", "backslashreplace")):
                path = Path(folder) / name
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                saved_fds.append(os.dup(fd))
                os.dup2(target, fd)
                os.close(target)
                paths.append(path)
                setattr(sys, name, io.TextIOWrapper(io.FileIO(path, "a"), encoding="utf-8", errors=errors,
                                                    write_through=True))
            output.original_stderr = os.fdopen(os.dup(saved_fds[1]), "w")
            yield output
        finally:
            for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            if sys.stdout is not saved_streams[0]:
                sys.stdout.close()
            if sys.stderr is not saved_streams[1]:
                sys.stderr.close()
            sys.stdout, sys.stderr = saved_streams
            if hasattr(output, "original_stderr"):
                output.original_stderr.close()
            output.stdout, output.stderr = (path.read_text(encoding="utf-8") for path in paths)


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory) -> str:
    """``export.cache_dir=<folder>`` shared by this worker's CLI tests: the cache is content-addressed, so each
    graph is exported once per worker, not once per test or module."""
    return f"export.cache_dir={tmp_path_factory.mktemp('export_cache')}"


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

    monkeypatch.syspath_prepend(str(FAKES / "pyacl"))
    _forget_acl()
    import acl

    acl._sim.reset()
    yield acl
    _forget_acl()
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
