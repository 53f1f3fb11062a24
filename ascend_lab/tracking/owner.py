"""Which process owns a run: the ``host`` and ``pid`` tags every run gets, and whether it still lives.

A job killed from outside (SIGKILL, the OOM killer, a launcher's timeout) cannot end its own run.
These tags let a later process on the same host tell such a run (owner gone) from one whose job
is still working (owner alive): the sweep's closing waits for the second kind, and the reaper
(:mod:`ascend_lab.tracking.reaper`) ends the first kind.
"""

from __future__ import annotations

import os
import socket
from typing import Any

HOST_TAG = "host"
PID_TAG = "pid"


def owner_tags() -> dict[str, str]:
    """The tags naming this process as a run's owner."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (owned by anyone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def local_owner_pid(run: Any) -> int | None:
    """The pid of ``run``'s owner when that owner ran on this host and is not this process."""
    tags = run.data.tags
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return None
    if tags.get(HOST_TAG) != socket.gethostname() or pid == os.getpid():
        return None
    return pid


def live_local_job(run: Any) -> int | None:
    """The pid of ``run``'s job process if it runs on this host and is still alive (not us)."""
    pid = local_owner_pid(run)
    return pid if pid is not None and process_alive(pid) else None


def dead_local_job(run: Any) -> int | None:
    """The pid of ``run``'s job process if it ran on this host and is gone."""
    pid = local_owner_pid(run)
    return pid if pid is not None and not process_alive(pid) else None
