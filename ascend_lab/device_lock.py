"""One accelerator per job: ``device.index=auto`` claims a device no other job on this host holds.

Ascend servers carry 8 NPUs, and one process per NPU is the norm; a parallel sweep (joblib, submitit_local, a
SLURM array on one node) would otherwise put every job on device 0. Each device has a lock file in
``device.lock_dir``; a job takes the first free one with ``flock`` (released by the kernel when the process
ends, so a killed job frees its device) and holds it until the job ends. The lock file names the holder (pid,
host, when), which is what a job that finds every device held prints. Choice for the n+1-th job: it **waits**
(``device.wait_s``, default an hour, with one line saying so), then fails naming every holder.

Which devices: NPUs where ``device.name`` is npu, the runtime is acl, or ``auto`` finds npu-smi chips; else CUDA
GPUs where ``nvidia-smi -L`` lists some. The visible-devices variables decide the candidates and the ordinal:
``ASCEND_RT_VISIBLE_DEVICES`` (torch_npu and ACL renumber the listed physical ids from 0; shared Ascend notes
§8, "Multi-NPU hosts") and ``CUDA_VISIBLE_DEVICES`` likewise. Locks are keyed by the physical id, so two jobs
with different visible sets still never share a chip. The job's config gets the ordinal it must use; the run
records it as the param ``device.claimed_index`` and the tags ``device.index`` / ``device.physical_id``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Iterator

from ascend_lab.errors import AscendLabError

log = logging.getLogger(__name__)

POLL_S = 0.5
VISIBLE_VARIABLES = {"npu": "ASCEND_RT_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES"}


class DeviceBusyError(AscendLabError):
    """Every device was held by other jobs for longer than device.wait_s."""


@dataclass(frozen=True)
class Claim:
    kind: str  # "npu" or "cuda"
    index: int  # the ordinal this process uses
    physical_id: str  # the id the lock (and npu-smi / nvidia-smi) knows
    lock_path: Path

    def tags(self) -> dict[str, str]:
        return {"device.index": str(self.index), "device.physical_id": f"{self.kind}:{self.physical_id}",
                "device.lock": str(self.lock_path)}


def host_devices(kind: str) -> list[str]:
    """Physical ids of the host's ``kind`` devices (npu-smi / nvidia-smi), [] where the tool is missing."""
    if kind == "npu":
        from ascend_lab.cann import npu_smi

        return [str(chip.npu_id) for chip in npu_smi.npu_smi_overview().chips]
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def candidates(kind: str, environ: dict | None = None) -> list[str]:
    """Physical ids in ordinal order: the visible-devices variable's list where set, else the host's devices."""
    environ = os.environ if environ is None else environ
    visible = environ.get(VISIBLE_VARIABLES[kind])
    if visible is not None and visible.strip():
        return [item.strip() for item in visible.split(",") if item.strip()]
    return host_devices(kind)


def device_kind(device_name: str, runtime_name: str) -> str | None:
    """Which kind of device ``device.index=auto`` claims (None: none, the job runs on the CPU)."""
    if device_name in ("npu", "cuda"):
        return device_name
    if runtime_name == "acl":
        return "npu"
    if device_name == "auto":
        for kind in ("npu", "cuda"):
            if host_devices(kind):
                return kind
    return None


def _try_lock(path: Path) -> IO | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666)  # other users' jobs on this host lock the same files
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown holder"
    except OSError:
        return "unknown holder"


@contextlib.contextmanager
def claim(kind: str, lock_dir: Path, wait_s: float, environ: dict | None = None) -> Iterator[Claim]:
    """Hold one free ``kind`` device for the duration (see the module docstring)."""
    ids = candidates(kind, environ)
    variable = VISIBLE_VARIABLES[kind]
    if not ids:
        raise DeviceBusyError(f"device.index=auto: no {kind} device found on this host ({variable} unset or "
                              f"empty and {'npu-smi' if kind == 'npu' else 'nvidia-smi'} lists none); set "
                              "device.index=<n> or device=cpu")
    paths = [Path(lock_dir) / f"{kind}-{physical}.lock" for physical in ids]
    deadline, announced = time.monotonic() + wait_s, False
    while True:
        for index, (physical, path) in enumerate(zip(ids, paths)):
            handle = _try_lock(path)
            if handle is not None:
                try:
                    yield Claim(kind, index, physical, path)
                finally:
                    handle.close()  # releases the flock
                return
        if time.monotonic() >= deadline:
            holders = "; ".join(f"{kind}:{physical} held by {_holder(path)}" for physical, path in zip(ids, paths))
            raise DeviceBusyError(
                f"device.index=auto: every {kind} device this job may use is held by another job after waiting "
                f"{wait_s:g} s (device.wait_s): {holders}. Run fewer jobs at once (hydra.launcher.n_jobs="
                f"{len(ids)}), raise device.wait_s, or widen {variable}.")
        if not announced:
            print(f"device.index=auto: all {len(ids)} {kind} devices are held by other jobs; waiting up to "
                  f"{wait_s:g} s (device.wait_s) for one to be released", flush=True)
            announced = True
        time.sleep(POLL_S)


@contextlib.contextmanager
def claimed(app_cfg, runtime_name: str) -> Iterator[tuple[object, Claim | None]]:
    """``app_cfg`` with ``device.index=auto`` replaced by a claimed device's ordinal for the job's duration
    (unchanged, claim None, when the index is given or the job runs on the CPU)."""
    device = app_cfg.device
    if not device.auto_index:
        yield app_cfg, None
        return
    kind = device_kind(device.name, runtime_name)
    if kind is None:
        yield replace(app_cfg, device=_with_index(device, 0)), None
        return
    with claim(kind, Path(device.lock_dir), device.wait_s) as held:
        log.info("device.index=auto: claimed %s:%d (physical %s)", kind, held.index, held.physical_id)
        yield replace(app_cfg, device=_with_index(device, held.index)), held


def _with_index(device, index: int):
    # The dataclass validates index=auto's companions against index; build the resolved copy field by field.
    resolved = object.__new__(type(device))
    resolved.__dict__.update({**device.__dict__, "index": index})
    return resolved


__all__ = ["Claim", "DeviceBusyError", "candidates", "claim", "claimed", "device_kind", "host_devices"]
