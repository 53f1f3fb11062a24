"""`doctor` group: the environment check (task=doctor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

from ascend_lab.errors import require, require_choice, require_positive

MATMUL_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class DoctorConfig:
    group: ClassVar[str] = "doctor"

    matmul_size: int = field(default=1024, metadata={"help": "N of the N×N @ N×N matmul timed on device and CPU."})
    matmul_dtype: str = field(default="float32", metadata={"help": "float32, float16 or bfloat16."})
    warmup: int = field(default=3, metadata={"help": "Untimed matmuls before timing (kernel load, allocator)."})
    repeats: int = field(default=10, metadata={"help": "Timed matmuls; the median is reported."})
    compare_to: Optional[str] = field(default=None, metadata={
        "help": "A run id (in tracking.uri's store) or the path of an environment.json (relative: to the launch "
                "directory): print and log what differs between this host's environment and that one."})

    def __post_init__(self) -> None:
        require_positive("doctor.matmul_size", self.matmul_size)
        require_choice("doctor.matmul_dtype", self.matmul_dtype, MATMUL_DTYPES)
        require_positive("doctor.warmup", self.warmup, allow_zero=True)
        require_positive("doctor.repeats", self.repeats)
        if self.compare_to is not None:
            require(bool(str(self.compare_to).strip()), "doctor.compare_to", self.compare_to,
                    "give a run id or the path of an environment.json (or leave it unset)")
