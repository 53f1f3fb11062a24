"""`atc` group: CANN's ATC compiler, ONNX → offline .om model (task=compile).

Flag names, values and exclusivity rules follow the CANN ATC parameter reference (hiascend atlasatcparam_16_*
pages: --dynamic_dims atlasatcparam_16_0020, --precision_mode atlasatcparam_16_0068, --precision_mode_v2 _0069).
Checks that need only this group run here; the ones that need the exported graph (input names, ranks,
how many dims are dynamic) run in :func:`ascend_lab.compile.shapes.derive_input_shapes`, and the graph's
ops are checked by :mod:`ascend_lab.compile.opcheck`.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from ascend_lab.errors import ConfigError, require, require_choice, require_positive

# Chips ATC and torch_npu know by name: torch_npu's own list (Ascend/pytorch
# torch_npu/csrc/core/npu/NpuVariables.cpp, socVersionMap) plus the names in the CANN docs and public
# soc maps (Tlntin/qwen-ascend-llm export/onnx2om.py). `npu-smi info` Name prefixed with "Ascend"; on A3 boards
# `npu-smi info -t board` gives "Chip Name_NPU Name" (Ascend910_9391).
SOC_VERSIONS = (
    "Ascend310", "Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4",
    "Ascend310P1", "Ascend310P2", "Ascend310P3", "Ascend310P4", "Ascend310P5", "Ascend310P7",
    "Ascend910A", "Ascend910B", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA",
    "Ascend910B1", "Ascend910B2", "Ascend910B2C", "Ascend910B3", "Ascend910B4", "Ascend910B4-1",
    "Ascend910_9391", "Ascend910_9392", "Ascend910_9381", "Ascend910_9382", "Ascend910_9372",
    "Ascend910_9362", "Ascend910_9361",
)
# Ascend's naming scheme for the names above: a chip that fits it but is newer than this list gets a
# warning, never a refusal, so a new board never blocks a user.
SOC_NAME_SCHEME = re.compile(r"^Ascend(310|910|950)(B\d+C?(-\d+)?|P\d+|Pro[AB]|Premium[AB]|A|B|_\d{4}|PR|DT)?$")
INPUT_FORMATS = ("ND", "NCHW", "NCDHW")
DYNAMIC_MODES = ("auto", "static", "dynamic_batch_size", "dynamic_dims", "shape_range")
EXPORT_DTYPES = ("float16", "float32")
PRECISION_MODES = (
    "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision",
    "allow_mix_precision_fp16", "allow_mix_precision_bf16", "force_fp32", "cube_fp16in_fp32out",
)
PRECISION_MODES_V2 = ("fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_bfloat16", "mixed_hif8")
OP_SELECT_IMPLMODES = ("high_performance", "high_precision", "high_precision_for_all", "high_performance_for_all")
ATC_LOG_LEVELS = ("debug", "info", "warning", "error", "null")
# Symbolic graph dims that dynamic_dims may turn into -1.
DYNAMIC_DIM_NAMES = ("batch", "seq")
# ATC accepts more than one and at most 100 profiles ("gears").
MAX_GEARS = 100
# Flags the schema sets itself: passing them again through extra_args would contradict it.
MANAGED_FLAGS = (
    "mode", "framework", "model", "output", "soc_version", "input_format", "input_shape", "dynamic_batch_size",
    "dynamic_image_size", "dynamic_dims", "input_shape_range", "precision_mode", "precision_mode_v2",
    "op_select_implmode", "log", "keep_dtype", "fusion_switch_file", "job_type",
)
# atc.tuning: CANN's AOE before the compile, by its --job_type (aoe "--job_type": 1 subgraph tuning (SGAT),
# 2 operator tuning (OPAT); hiascend aoerc_16_0002).
AOE_JOB_TYPES = {"subgraph": 1, "operator": 2}
TUNING_MODES = ("none", *AOE_JOB_TYPES)
# --keep_dtype lines: an original op name, or OpType::<type> (--keep_dtype page, atlasatcparam_16_0074).
_KEEP_DTYPE_ENTRY = re.compile(r"^(OpType::)?[A-Za-z0-9_./:-]+$")
# --fusion_switch_file lines name a fusion pass: letters, digits, underscores (fusion rules reference).
_FUSION_PASS = re.compile(r"^[A-Za-z0-9_]+$")
_SHAPE_ENTRY = re.compile(r"^[^:;]+:(-1|\d+(~\d+)?)?(,(-1|\d+(~\d+)?))*$")


def shape_range_unsupported(soc_version: str) -> bool:
    """Ascend310 and Ascend310B* cannot run true dynamic shapes (ranges in --input_shape)."""
    return soc_version == "Ascend310" or soc_version.startswith("Ascend310B")


def check_soc_version(soc_version: str) -> None:
    """Known chips pass; a name that fits Ascend's scheme passes with a warning; anything else is refused
    with the closest known names."""
    if soc_version in SOC_VERSIONS:
        return
    if SOC_NAME_SCHEME.match(soc_version):
        warnings.warn(
            f"atc.soc_version={soc_version} is not among the chips ascend_lab knows ({len(SOC_VERSIONS)} from "
            "torch_npu and the CANN docs) but fits Ascend's naming scheme; using it as given. If ATC refuses it, "
            "take the name from `npu-smi info` (Name, prefixed with Ascend) or, on A3, `npu-smi info -t board`.",
            UserWarning, stacklevel=2)
        return
    fixed = "Ascend" + soc_version if re.match(r"^(310|910|950)", soc_version) else None
    close = difflib.get_close_matches(fixed or soc_version, SOC_VERSIONS, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ConfigError("atc.soc_version", soc_version,
                      f"not an Ascend chip name{hint}; `npu-smi info` shows the Name to prefix with Ascend "
                      f"(910B3 → Ascend910B3). Known: {', '.join(SOC_VERSIONS)}")


def flag_name(arg: str) -> str:
    """The flag an ATC argument sets, normalised as ATC does (`-k`→`k`, `soc-version`→`soc_version`)."""
    return arg.lstrip("-").split("=", 1)[0].replace("-", "_")


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
        metadata={"help": "Explicit --input_shape (name:d,d;name:d,d) using the graph's input names; null: derived "
                          "from the ONNX inputs: batch from benchmark.batch_size, seq from benchmark.seq_len (or "
                          "the gears), capacity from export.kv_capacity."},
    )
    dynamic_mode: str = field(
        default="auto",
        metadata={"help": "auto: the kv_cache graph gets dynamic_dims gears over its sequence dim (1 for decode "
                          "steps, export.prefill_chunks for the prompt), other graphs static; static; "
                          "dynamic_batch_size (-1 in the batch dim, gears atc.dynamic_batch_sizes); "
                          "dynamic_dims (-1 in the atc.dynamic_dim_names dims, gears atc.dynamic_dims); "
                          "shape_range (1~N ranges in --input_shape, no gears; not on Ascend310/310B*)."},
    )
    dynamic_batch_sizes: Optional[List[int]] = field(
        default=None, metadata={"help": "dynamic_batch_size gears (2 to 100 of them); null: benchmark.batch_sizes."},
    )
    dynamic_dims: Optional[List[str]] = field(
        default=None,
        metadata={"help": "dynamic_dims gears (2 to 100), each 'd,d,...': one value per atc.dynamic_dim_names "
                          "entry (e.g. batch,seq → '1,16'), or ATC's own form, one value per -1 in --input_shape order."},
    )
    dynamic_dim_names: List[str] = field(
        default_factory=lambda: ["batch", "seq"],
        metadata={"help": "dynamic_dims: which symbolic graph dims become -1 (batch, seq)."},
    )
    max_seq_len: Optional[int] = field(
        default=None, metadata={"help": "shape_range: upper bound of the seq dim; null: benchmark.seq_len."},
    )
    precision_mode: Optional[str] = field(
        default="must_keep_origin_dtype",
        metadata={"help": "--precision_mode. must_keep_origin_dtype (the default here) runs every op in the dtype "
                          "the graph was exported in (atc.export_dtype): ATC's own default force_fp16 casts float32 "
                          "ops to float16, which turns large-magnitude float32 constants such as an attention "
                          "mask's finfo(float32).min into -inf, and a fully masked (left-padded) row into NaN. "
                          "null: ATC's default (force_fp16). Set it null to use precision_mode_v2."},
    )
    precision_mode_v2: Optional[str] = field(
        default=None,
        metadata={"help": "--precision_mode_v2 (excludes precision_mode: set atc.precision_mode=null with it), "
                          "e.g. mixed_float16."},
    )
    export_dtype: str = field(
        default="float16",
        metadata={"help": "dtype the graph is exported in for ATC (its own export cache entry): float16, the AI "
                          "Core's matmul type (ATC's ONNX MatMul takes float16 only), kept as is by "
                          "must_keep_origin_dtype; or float32, for precision modes that cast to float16 "
                          "themselves. onnxruntime and torch keep running model.dtype."},
    )
    skip_op_check: bool = field(
        default=False,
        metadata={"help": "Experts only: call atc even when the graph has ops or input dtypes ATC's ONNX operator "
                          "pages do not list (ascend_lab/compile/atc_onnx_ops.json); the check's findings are "
                          "still logged."},
    )
    op_select_implmode: Optional[str] = field(
        default=None, metadata={"help": "--op_select_implmode; null: ATC's default high_performance."},
    )
    keep_dtype: List[str] = field(
        default_factory=list,
        metadata={"help": "Ops that keep the graph's own dtype whatever the precision mode (--keep_dtype): original op "
                          "names, or OpType::<type> for every op of a type (e.g. ['OpType::Softmax']); written to the "
                          "file ATC reads. ATC ignores it under must_keep_origin_dtype / origin (everything keeps its "
                          "dtype there)."},
    )
    fusion_switch_off: List[str] = field(
        default_factory=list,
        metadata={"help": "Graph / UB fusion passes to switch off (--fusion_switch_file, one '<pass>:off' line each; "
                          "names from CANN's fusion rules reference, e.g. ['MatMulBiasAddFusionPass'])."},
    )
    tuning: str = field(
        default="none",
        metadata={"help": "Run CANN's AOE before the compile: none, subgraph (aoe --job_type=1) or operator "
                          "(--job_type=2); its report is logged and the knowledge base it writes is what this "
                          "compile uses. Part of the compile cache key. AOE takes minutes to hours."},
    )
    tuning_timeout_s: float = field(
        default=86400.0, metadata={"help": "Kill AOE (its whole process group) after this many seconds."},
    )
    log: str = field(default="error", metadata={"help": "--log level: debug, info, warning, error, null."})
    extra_args: List[str] = field(
        default_factory=list,
        metadata={"help": "More ATC flags passed verbatim, e.g. ['--optypelist_for_implmode=Pooling']; flags this "
                          "group sets (soc_version, input_shape, precision_mode, ...) must be set through it."},
    )
    timeout_s: float = field(default=3600.0, metadata={"help": "Kill ATC (its whole process group) after this many seconds."})
    toolkit_home: Optional[str] = field(
        default=None,
        metadata={"help": "CANN install (folder with set_env.sh); null: the documented locations."},
    )
    output_dir: str = field(
        default="outputs/om",
        metadata={"help": "Compiled .om cache: one folder per ONNX sha256 + ATC settings, reused when identical."},
    )
    log_om: bool = field(default=False, metadata={"help": "Also copy the .om into the run's artifacts (GBs for real models)."})
    dry_run: bool = field(
        default=False, metadata={"help": "Print and log the ATC command line and environment; do not run it."},
    )

    def __post_init__(self) -> None:
        check_soc_version(self.soc_version)
        require_choice("atc.input_format", self.input_format, INPUT_FORMATS)
        require_choice("atc.dynamic_mode", self.dynamic_mode, DYNAMIC_MODES)
        require_choice("atc.export_dtype", self.export_dtype, EXPORT_DTYPES)
        require_choice("atc.log", self.log, ATC_LOG_LEVELS)
        require(not (self.precision_mode and self.precision_mode_v2), "atc.precision_mode_v2",
                self.precision_mode_v2, "cannot be combined with atc.precision_mode; set atc.precision_mode=null "
                                        "to use it")
        if self.precision_mode is not None:
            require_choice("atc.precision_mode", self.precision_mode, PRECISION_MODES)
        if self.precision_mode_v2 is not None:
            require_choice("atc.precision_mode_v2", self.precision_mode_v2, PRECISION_MODES_V2)
        if self.op_select_implmode is not None:
            require_choice("atc.op_select_implmode", self.op_select_implmode, OP_SELECT_IMPLMODES)
        require_positive("atc.timeout_s", self.timeout_s)
        require_choice("atc.tuning", self.tuning, TUNING_MODES)
        require_positive("atc.tuning_timeout_s", self.tuning_timeout_s)
        bad = [e for e in self.keep_dtype if not _KEEP_DTYPE_ENTRY.match(e)]
        require(not bad, "atc.keep_dtype", self.keep_dtype,
                f"{bad} are not op names or OpType::<type> entries (one op per entry, no spaces)")
        bad = [e for e in self.fusion_switch_off if not _FUSION_PASS.match(e)]
        require(not bad, "atc.fusion_switch_off", self.fusion_switch_off,
                f"{bad} are not fusion pass names (letters, digits, underscores)")
        if self.keep_dtype and (self.precision_mode == "must_keep_origin_dtype" or self.precision_mode_v2 == "origin"):
            warnings.warn(f"atc.keep_dtype={self.keep_dtype} has no effect with precision mode "
                          f"{self.precision_mode or self.precision_mode_v2}: every op keeps its dtype there (ATC "
                          "ignores --keep_dtype); pick a precision mode that lowers ops to see it work",
                          UserWarning, stacklevel=2)
        if self.max_seq_len is not None:
            require_positive("atc.max_seq_len", self.max_seq_len)
        require(bool(self.output_dir), "atc.output_dir", self.output_dir, "must name a folder")
        if self.input_shape is not None:
            entries = self.input_shape.split(";")
            require(all(_SHAPE_ENTRY.match(e) for e in entries), "atc.input_shape", self.input_shape,
                    "expected name:d,d;name:d,d (d a size, -1, or a range lo~hi)")
        self._check_dynamic()
        self._check_extra_args()

    def _check_dynamic(self) -> None:
        mode = self.dynamic_mode
        # Each dynamic option excludes the others (dynamic_dims vs dynamic_batch_size vs ranges).
        require(self.dynamic_batch_sizes is None or mode == "dynamic_batch_size", "atc.dynamic_batch_sizes",
                self.dynamic_batch_sizes, f"only applies to atc.dynamic_mode=dynamic_batch_size (it is {mode})")
        require(self.dynamic_dims is None or mode == "dynamic_dims", "atc.dynamic_dims", self.dynamic_dims,
                f"only applies to atc.dynamic_mode=dynamic_dims (it is {mode})")
        if self.dynamic_batch_sizes is not None:
            sizes = self.dynamic_batch_sizes
            require(1 < len(sizes) <= MAX_GEARS and all(b > 0 for b in sizes), "atc.dynamic_batch_sizes", sizes,
                    f"must list 2 to {MAX_GEARS} batch sizes > 0")
        if mode == "dynamic_dims":
            require(bool(self.dynamic_dims), "atc.dynamic_dims", self.dynamic_dims,
                    "dynamic_mode=dynamic_dims needs gears, e.g. atc.dynamic_dims='[\"1,16\",\"4,16\"]'")
            require(1 < len(self.dynamic_dims) <= MAX_GEARS, "atc.dynamic_dims", self.dynamic_dims,
                    f"must list 2 to {MAX_GEARS} gears")
            require(all(re.fullmatch(r"\d+(,\d+)*", g) for g in self.dynamic_dims), "atc.dynamic_dims",
                    self.dynamic_dims, "each gear is comma-separated sizes, e.g. '1,16'")
            require(self.input_format == "ND", "atc.input_format", self.input_format,
                    "dynamic_dims needs input_format ND")
            require(len(self.dynamic_dim_names) > 0 and all(n in DYNAMIC_DIM_NAMES for n in self.dynamic_dim_names),
                    "atc.dynamic_dim_names", self.dynamic_dim_names,
                    "must name one or more of " + ", ".join(DYNAMIC_DIM_NAMES))
        if mode == "shape_range":
            require(not shape_range_unsupported(self.soc_version), "atc.dynamic_mode", mode,
                    f"shape ranges (true dynamic shape) are not supported on {self.soc_version}; use "
                    "dynamic_batch_size or dynamic_dims gears, or a soc_version such as Ascend910B")

    def _check_extra_args(self) -> None:
        expects_value = False
        for arg in self.extra_args:
            if not arg.startswith("-"):  # the value of a preceding `--name value`
                require(expects_value, "atc.extra_args", self.extra_args, f"{arg!r} is not a flag (--name=value)")
                expects_value = False
                continue
            expects_value = "=" not in arg
            name = flag_name(arg)
            require(name not in MANAGED_FLAGS, "atc.extra_args", self.extra_args,
                    f"{arg!r} sets --{name}, which this group controls: use atc.* keys instead")
