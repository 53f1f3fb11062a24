"""Helpers for the sweep, server and resume tests: start the CLI in the background, find a job's
run while it runs, signal or kill it, and read runs back split into the sweep parent and children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import cli_env

PARENT_TAG = "mlflow.parentRunId"


def start_cli(launch_dir: Path, *overrides: str) -> tuple[subprocess.Popen, Path]:
    """The real CLI in the background; stdout+stderr go to a file read by :func:`wait_for_output`."""
    log = launch_dir / f"cli-{time.monotonic_ns()}.log"
    # faulthandler: a CLI that does not end in time is stopped with SIGABRT by finish(), printing every thread's stack.
    # The CLI starts as from a terminal, with Ctrl-C's default disposition: a suite started in the background of a
    # non-interactive shell has SIGINT ignored (POSIX, for asynchronous lists), and its children would inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "ascend_lab.run", *overrides], cwd=launch_dir,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**cli_env(), "PYTHONFAULTHANDLER": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, log


def wait_for_output(proc: subprocess.Popen, log: Path, text: str, count: int = 1, timeout: float = 120) -> str:
    """Wait until ``text`` appears ``count`` times in the CLI's output (it must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = log.read_text()
        if out.count(text) >= count:
            return out
        assert proc.poll() is None, f"CLI exited ({proc.returncode}) before printing {text!r}:\n{out}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not printed {count}x within {timeout}s:\n{log.read_text()}")


def finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> tuple[int, str]:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise AssertionError(f"the CLI did not end within {timeout}s; its output and stacks:\n{log.read_text()[-8000:]}")
    return rc, log.read_text()


def store_client(launch_dir: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{launch_dir / 'outputs' / 'mlflow.db'}")


def wait_for_running_run(client, filter_string: str, timeout: float = 120):
    """The first RUNNING run matching ``filter_string`` (in experiment ascend_lab) that has a pid tag."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exp = client.get_experiment_by_name("ascend_lab")
        if exp is not None:
            runs = client.search_runs([exp.experiment_id],
                                      filter_string=f"{filter_string} and attributes.status = 'RUNNING'")
            if runs and "pid" in runs[0].data.tags:
                return runs[0]
        time.sleep(0.3)
    raise AssertionError(f"no RUNNING run matching {filter_string} within {timeout}s")


def kill_job(run) -> int:
    """SIGKILL the job process named by the run's pid tag (it must run on this host)."""
    import socket

    assert run.data.tags["host"] == socket.gethostname()
    pid = int(run.data.tags["pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


def split_runs(client, experiment: str = "ascend_lab"):
    """(parents, children) of the experiment; parents sorted by start time."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing"
    runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    return parents, children


def children_of(children, parent) -> list:
    return [c for c in children if c.data.tags[PARENT_TAG] == parent.info.run_id]
