"""The ATC command line (pure): config + derived shapes → argv, and the compile cache key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from ascend_lab.compile.shapes import InputShapes
from ascend_lab.config.atc import AtcConfig


def build_atc_command(atc_cfg: AtcConfig, onnx_path: str | Path, input_shapes: InputShapes,
                      output_prefix: str | Path) -> list[str]:
    """The ATC argv (``atc`` first): ONNX → ``<output_prefix>*.om``. Pure."""
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
    argv.append(f"--log={atc_cfg.log}")
    argv.extend(atc_cfg.extra_args)
    return argv


def cache_key(onnx_sha256: str, argv: Sequence[str], toolkit_version: str | None) -> str:
    """What determines the .om: the ONNX bytes, every setting flag, the CANN version.

    Paths (--model, --output) and --log do not change the model, so they are left out.
    """
    settings = [a for a in argv[1:] if not a.startswith(("--model=", "--output=", "--log="))]
    blob = json.dumps({"onnx": onnx_sha256, "settings": settings, "cann": toolkit_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


