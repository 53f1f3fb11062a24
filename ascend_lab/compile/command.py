"""The ATC command line (pure): config + derived shapes → argv, and the compile cache key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

from ascend_lab.compile.shapes import InputShapes
from ascend_lab.compile.switches import FILE_FLAGS as SWITCH_FLAGS
from ascend_lab.config.atc import AtcConfig


def build_atc_command(atc_cfg: AtcConfig, onnx_path: str | Path, input_shapes: InputShapes,
                      output_prefix: str | Path, switches: Mapping[str, Path] | None = None) -> list[str]:
    """The ATC argv (``atc`` first): ONNX → ``<output_prefix>*.om``. Pure. ``switches``: ``{flag: file}`` of the
    file-valued switches (:func:`ascend_lab.compile.switches.switch_files`)."""
    argv = [
        "atc", "--framework=5", f"--model={onnx_path}", f"--output={output_prefix}",
        f"--soc_version={atc_cfg.soc_version}", f"--input_format={atc_cfg.input_format}",
        f"--input_shape={input_shapes.input_shape}",
    ]
    if input_shapes.batch_gears:
        argv.append("--dynamic_batch_size=" + ",".join(map(str, input_shapes.batch_gears)))
    if input_shapes.dims_gears:
        argv.append("--dynamic_dims=" + ";".join(",".join(map(str, g)) for g in input_shapes.dims_gears))
    if atc_cfg.precision_mode:
        argv.append(f"--precision_mode={atc_cfg.precision_mode}")
    if atc_cfg.precision_mode_v2:
        argv.append(f"--precision_mode_v2={atc_cfg.precision_mode_v2}")
    if atc_cfg.op_select_implmode:
        argv.append(f"--op_select_implmode={atc_cfg.op_select_implmode}")
    for flag, path in sorted((switches or {}).items()):
        argv.append(f"--{flag}={path}")
    argv.append(f"--log={atc_cfg.log}")
    argv.extend(atc_cfg.extra_args)
    return argv


def cache_key(onnx_sha256: str, argv: Sequence[str], toolkit_version: str | None, tuning: str = "none") -> str:
    """What determines the .om: the ONNX bytes, every setting flag, the CANN version, and the AOE tuning run
    before the compile (``atc.tuning``; absent from the key when none, so untuned keys stay as they were).

    Paths (--model, --output) and --log do not change the model, so they are left out; a switch file counts by
    its name, which is its content's hash (:mod:`ascend_lab.compile.switches`), not by its folder.
    """
    settings = [_settled(a) for a in argv[1:] if not a.startswith(("--model=", "--output=", "--log="))]
    record = {"onnx": onnx_sha256, "settings": settings, "cann": toolkit_version}
    if tuning != "none":
        record["aoe"] = tuning
    blob = json.dumps(record, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _settled(arg: str) -> str:
    name, sep, value = arg.partition("=")
    return f"{name}={Path(value).name}" if sep and name.lstrip("-") in SWITCH_FLAGS else arg


