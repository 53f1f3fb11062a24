"""device.index=auto: one device per concurrent job on a host (ascend_lab.device_lock), with the stand-in
npu-smi listing the host's NPUs; ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES decide the candidates."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from ascend_lab import device_lock
from ascend_lab.config import AppConfig
from ascend_lab.config.device import DeviceConfig
from ascend_lab.errors import ConfigError

from conftest import stand_in_env
from sweep_helpers import split_runs, store_client

from conftest import FAKES  # noqa: E402


@pytest.fixture
def eight_npus(monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NPU_SMI_CHIPS", "8")
    monkeypatch.delenv("ASCEND_RT_VISIBLE_DEVICES", raising=False)


def _hold(lock_dir: str, barrier, out) -> None:
    with device_lock.claim("npu", Path(lock_dir), wait_s=0) as held:
        barrier.wait(timeout=60)  # every process holds its device at once
        out.put((held.index, held.physical_id))
        barrier.wait(timeout=60)


def test_eight_concurrent_claims_get_eight_devices_and_a_ninth_is_refused_naming_holders(eight_npus, tmp_path):
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(9), context.Queue()
    workers = [context.Process(target=_hold, args=(str(tmp_path), barrier, out)) for _ in range(8)]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(timeout=60)
        got = sorted(out.get(timeout=10) for _ in workers)
        assert got == [(i, str(i)) for i in range(8)]
        with pytest.raises(device_lock.DeviceBusyError) as info:  # the 9th job, device.wait_s=0
            with device_lock.claim("npu", tmp_path, wait_s=0):
                pass
        message = str(info.value)
        assert "every npu device this job may use is held" in message and "device.wait_s" in message
        assert f"npu:7 held by pid {workers[7].pid}" in message or "npu:7 held by pid" in message
        barrier.wait(timeout=60)
    finally:
        for worker in workers:
            worker.join(timeout=30)
    # Released when the holders end: the next claim gets device 0 again.
    with device_lock.claim("npu", tmp_path, wait_s=0) as held:
        assert held.index == 0


def test_a_job_waits_for_a_released_device(eight_npus, tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "6")
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(2), context.Queue()
    holder = context.Process(target=_hold, args=(str(tmp_path), barrier, out))
    holder.start()
    barrier.wait(timeout=60)
    assert out.get(timeout=10) == (0, "6")
    barrier.wait(timeout=60)  # the holder lets go now; the claim below waits for it
    with device_lock.claim("npu", tmp_path, wait_s=60) as held:
        assert (held.index, held.physical_id) == (0, "6")
    holder.join(timeout=30)


def test_visible_devices_pick_the_candidates_and_the_ordinal(eight_npus, tmp_path, monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,5")
    assert device_lock.candidates("npu") == ["4", "5"]
    with device_lock.claim("npu", tmp_path, wait_s=0) as first, device_lock.claim("npu", tmp_path, wait_s=0) as second:
        assert (first.index, first.physical_id, second.index, second.physical_id) == (0, "4", 1, "5")
        assert first.lock_path.name == "npu-4.lock"
    assert device_lock.candidates("cuda", {"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert device_lock.device_kind("auto", "acl") == "npu" and device_lock.device_kind("cpu", "torch") is None


def test_auto_index_config_resolves_to_the_claimed_ordinal(eight_npus, tmp_path):
    cfg = AppConfig(device=DeviceConfig(name="npu", index="auto", lock_dir=str(tmp_path)))
    with device_lock.claimed(cfg, "acl") as (resolved, held):
        assert resolved.device.index == held.index == 0 and cfg.device.index == "auto"
        assert held.tags()["device.physical_id"] == "npu:0"
    with device_lock.claimed(AppConfig(device=DeviceConfig(name="cpu", index="auto")), "torch") as (resolved, held):
        assert resolved.device.index == 0 and held is None
    with pytest.raises(ConfigError, match="device.index='x'"):
        DeviceConfig(index="x")
    with pytest.raises(ConfigError, match="device.wait_s=5: applies only with device.index=auto"):
        DeviceConfig(index=1, wait_s=5)


@pytest.mark.slow
def test_a_joblib_sweep_with_a_job_per_npu_gets_distinct_npus(run_cli, tmp_path, export_cache):
    """The stand-in npu-smi lists 4 chips and 4 jobs run at once; its barrier keeps them in lockstep, so all hold a
    device at once: each gets its own, logged as param and tags (4 rather than a server's 8: the same claims race,
    at half the processes to start). The jobs are short task=bench runs on runtime=acl (the
    pyACL simulator with 4 devices) over an .om compiled before the sweep: each opens the device it claimed."""
    env = stand_in_env(FAKE_NPU_SMI_CHIPS="4", ASCEND_LAB_SIM_DEVICES="4")
    env.pop("ASCEND_RT_VISIBLE_DEVICES", None)
    compiled = run_cli("task=compile", export_cache, "telemetry=off", env=env)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    env["FAKE_NPU_SMI_BARRIER"] = f"{tmp_path / 'barrier'}:4"
    result = run_cli("-m", "task=bench", "runtime=acl", "benchmark.iterations=1,2,3,4", "benchmark.warmup=0",
                     "benchmark.min_duration_s=0", "benchmark.new_tokens=2", export_cache, "device.index=auto",
                     f"device.lock_dir={tmp_path / 'locks'}", "telemetry=off", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=4", env=env, timeout=600)
    _, children = split_runs(store_client(tmp_path))
    assert len(children) == 4, result.stdout + result.stderr
    claimed = sorted(int(c.data.params["device.claimed_index"]) for c in children)
    assert claimed == list(range(4)), claimed
    assert sorted(c.data.tags["device.physical_id"] for c in children) == [f"npu:{i}" for i in range(4)]
    assert all(c.data.params["device.index"] == "auto" for c in children)
    assert sorted(c.data.tags["device"] for c in children) == [f"npu:{i}" for i in range(4)]  # the runtime's device
