"""`atc` group: CANN's ATC compiler, ONNX → offline .om model (task=compile).

Flag names and values follow the CANN ATC reference (see README, "Ascend interfaces").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from ascend_lab.errors import require, require_choice, require_positive

# Names from the CANN docs and public soc maps; `npu-smi info` Name prefixed with "Ascend".
SOC_VERSIONS = (
    "Ascend310", "Ascend310B1", "Ascend310P1", "Ascend310P3", "Ascend310P5", "Ascend310P7",
    "Ascend910A", "Ascend910B", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA",
    "Ascend910B1", "Ascend910B2", "Ascend910B2C", "Ascend910B3", "Ascend910B4", "Ascend910B4-1",
    "Ascend910_9391", "Ascend910_9381", "Ascend910_9372", "Ascend910_9362",
)
INPUT_FORMATS = ("ND", "NCHW", "NCDHW")
DYNAMIC_MODES = ("static", "dynamic_batch_size", "dynamic_dims", "shape_range")
PRECISION_MODES = (
    "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
    "allow_mix_precision_fp16", "allow_mix_precision_bf16", "force_fp32", "cube_fp16in_fp32out",
)
PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "mixed_hif8")
OP_SELECT_IMPLMODES = ("high_performance", "high_precision", "high_precision_for_all", "high_performance_for_all")
ATC_LOG_LEVELS = ("debug", "info", "warning", "error", "null")


@dataclass
class AtcConfig:
    group: ClassVar[str] = "atc"

    soc_version: str = field(
        default="Ascend910B3",
        metadata={"help": "Target chip: `npu-smi info` Name prefixed with Ascend (910B3 → Ascend910B3)."},
    )
    input_format: str = field(default="ND", metadata={"help": "ND for transformer inputs (NCHW, NCDHW for images)."})
    input_shape: Optional[str] = field(
        default=None,
        metadata={"help": "Explicit --input_shape (name:d,d;name:d,d); null: derived from the ONNX inputs "
                          "and benchmark.batch_size / benchmark.seq_len."},
    )
    dynamic_mode: str = field(
        default="static",
        metadata={"help": "static, dynamic_batch_size (gears atc.dynamic_batch_sizes), dynamic_dims "
                          "(gears atc.dynamic_dims) or shape_range (ranges in --input_shape)."},
    )
    dynamic_batch_sizes: Optional[List[int]] = field(
        default=None, metadata={"help": "Batch gears; null: benchmark.batch_sizes."},
    )
    dynamic_dims: Optional[List[str]] = field(
        default=None, metadata={"help": "dynamic_dims gears, each 'd,d,...' listing values for the -1s in order."},
    )
    precision_mode: Optional[str] = field(default=None, metadata={"help": "--precision_mode (excludes precision_mode_v2)."})
    precision_mode_v2: Optional[str] = field(default=None, metadata={"help": "--precision_mode_v2 (excludes precision_mode)."})
    op_select_implmode: Optional[str] = field(default=None, metadata={"help": "--op_select_implmode."})
    log: str = field(default="error", metadata={"help": "--log level: debug, info, warning, error, null."})
    extra_args: List[str] = field(default_factory=list, metadata={"help": "More ATC flags, passed verbatim."})
    timeout_s: float = field(default=3600.0, metadata={"help": "Kill ATC after this many seconds."})
    toolkit_home: Optional[str] = field(
        default=None,
        metadata={"help": "CANN install (folder with set_env.sh); null: the documented locations."},
    )
    output_dir: str = field(default="outputs/om", metadata={"help": "Where compiled .om models go."})
    dry_run: bool = field(default=False, metadata={"help": "Print and log the ATC command line, do not run it."})

    def __post_init__(self) -> None:
        require_choice("atc.soc_version", self.soc_version, SOC_VERSIONS)
        require_choice("atc.input_format", self.input_format, INPUT_FORMATS)
        require_choice("atc.dynamic_mode", self.dynamic_mode, DYNAMIC_MODES)
        require_choice("atc.log", self.log, ATC_LOG_LEVELS)
        require(not (self.precision_mode and self.precision_mode_v2), "atc.precision_mode_v2",
                self.precision_mode_v2, "cannot be combined with atc.precision_mode; set only one")
        if self.precision_mode is not None:
            require_choice("atc.precision_mode", self.precision_mode, PRECISION_MODES)
        if self.precision_mode_v2 is not None:
            require_choice("atc.precision_mode_v2", self.precision_mode_v2, PRECISION_MODES_V2)
        if self.op_select_implmode is not None:
            require_choice("atc.op_select_implmode", self.op_select_implmode, OP_SELECT_IMPLMODES)
        require_positive("atc.timeout_s", self.timeout_s)
        if self.dynamic_batch_sizes is not None:
            require(len(self.dynamic_batch_sizes) > 0 and all(b > 0 for b in self.dynamic_batch_sizes),
                    "atc.dynamic_batch_sizes", self.dynamic_batch_sizes, "must be a non-empty list of sizes > 0")
        if self.dynamic_mode == "dynamic_dims":
            require(bool(self.dynamic_dims), "atc.dynamic_dims", self.dynamic_dims,
                    "dynamic_mode=dynamic_dims needs gears, e.g. atc.dynamic_dims='[\"1,16\",\"4,16\"]'")
