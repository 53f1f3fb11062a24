"""`device` group: which accelerator the torch side of every task runs on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ascend_lab.errors import require, require_choice

DEVICE_NAMES = ("auto", "cpu", "cuda", "npu")


@dataclass
class DeviceConfig:
    group: ClassVar[str] = "device"

    name: str = field(
        default="auto",
        metadata={"help": "auto (npu > cuda > cpu, first one usable), cpu, cuda or npu."},
    )
    index: int = field(default=0, metadata={"help": "Device ordinal on multi-device hosts (npu:N / cuda:N)."})

    def __post_init__(self) -> None:
        require_choice("device.name", self.name, DEVICE_NAMES)
        require(self.index >= 0, "device.index", self.index, "must be ≥ 0")
