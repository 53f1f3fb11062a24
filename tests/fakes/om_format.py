"""The stand-in `.om` file format shared by the fake ``atc`` and the pyACL simulator.

A real .om is an opaque binary that only CANN reads. The stand-in is a small container the fake
ATC writes and the simulator loads: a magic line, one JSON header line, then the ONNX bytes the
model was compiled from (the simulator executes them with onnxruntime).

Header fields:
  soc_version      str           the --soc_version it was compiled for
  inputs           list of {"name": str, "dims": [int,...] (-1 where dynamic), "dtype": str numpy name}
  outputs          list of {"name": str, "dims": [int,...] (-1 where dynamic), "dtype": str}
  dynamic          null | {"kind": "batch", "gears": [int,...]} | {"kind": "dims", "gears": [[int,...],...]}
  input_format     str
  precision_mode   str | null

Optional fields the fake ATC also writes (readers may ignore them):
  precision_mode_v2   str | null
  op_select_implmode  str | null
  input_shape_ranges  null | {input name: [dim token, ...]} where --input_shape used lo~hi ranges (those
                      dims are -1 in ``inputs``; a true dynamic-shape model, no gears)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MAGIC = b"ASCEND_LAB_FAKE_OM v1\n"


def write_om(path: Path, header: dict[str, Any], onnx_bytes: bytes) -> None:
    path.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + onnx_bytes)


def read_om(path: Path) -> tuple[dict[str, Any], bytes]:
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not an .om model (bad magic)")
    header_line, _, onnx_bytes = data[len(MAGIC):].partition(b"\n")
    return json.loads(header_line), onnx_bytes
