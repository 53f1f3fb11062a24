"""`device` group: which accelerator the torch side of every task runs on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

from ascend_lab.errors import require, require_choice

DEVICE_NAMES = ("auto", "cpu", "cuda", "npu")


@dataclass
class DeviceConfig:
    group: ClassVar[str] = "device"

    name: str = field(
        default="auto",
        metadata={"help": "auto (npu > cuda > cpu, first one usable), cpu, cuda or npu."},
    )
    index: Union[int, str] = field(default=0, metadata={
        "help": "Device ordinal on multi-device hosts (npu:N / cuda:N, as the process sees them under "
                "ASCEND_RT_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES), or auto: each job claims a device no other "
                "job on this host holds (a lock file per device in device.lock_dir; parallel sweeps get one "
                "device per job), waiting up to device.wait_s when all are held."})
    lock_dir: str = field(default="/tmp/ascend_lab/device_locks", metadata={
        "help": "device.index=auto: the host-wide folder of the per-device lock files (shared by every job and "
                "user on the host)."})
    wait_s: float = field(default=3600.0, metadata={
        "help": "device.index=auto: how long a job waits for a device when every one is held; then it fails "
                "naming the holders (0: fail at once)."})

    def __post_init__(self) -> None:
        require_choice("device.name", self.name, DEVICE_NAMES)
        if isinstance(self.index, str):
            require(self.index == "auto", "device.index", self.index, "must be a device ordinal ≥ 0 or auto")
        else:
            require(self.index >= 0, "device.index", self.index, "must be ≥ 0 (or auto)")
        require(self.wait_s >= 0, "device.wait_s", self.wait_s, "must be ≥ 0")
        if self.index != "auto":
            defaults = DeviceConfig.__dataclass_fields__
            for key in ("lock_dir", "wait_s"):
                require(getattr(self, key) == defaults[key].default, f"device.{key}", getattr(self, key),
                        "applies only with device.index=auto")

    @property
    def auto_index(self) -> bool:
        return self.index == "auto"
