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
  framework           int, the --framework it was compiled from (5 = ONNX). Present in every header the
                      fake ATC writes; a header without it was written by hand in a test (see below).
  precision_mode_v2   str | null
  op_select_implmode  str | null
  input_shape_ranges  null | {input name: [dim token, ...]} where --input_shape used lo~hi ranges (those
                      dims are -1 in ``inputs``; a true dynamic-shape model, no gears)
  output_nodes        list, one {"op_name": str, "edge_index": int} per entry of ``outputs``: the ATC name
                      of the ONNX node producing that output (an unnamed node is ``<OpType>_<n>``, as
                      Ascend/parser onnx_parser.cc UpdateAllNodeName names it, or a fused PartitionedCall_... name)
                      and which of its outputs it is; "named": false where --out_nodes was given (no output name)
  external_data_from  str, only for graphs whose weights are ONNX external data (over protobuf's 2 GB): the
                      source .onnx, whose data file the simulator reads in place (the stand-in does not copy
                      gigabytes into its container; only must_keep_origin_dtype is emulated for these)

How the pyACL simulator reads them:
  - framework 5 with output_nodes: ``get_output_name_by_index`` (and the "name" of get_output_dims /
    get_cur_output_dims) is ``op_name:edge_index:name``, as CANN documents for ONNX models; inputs keep
    their graph names.
  - precision: precision_mode force_fp16 or precision_mode_v2 fp16 → the graph runs in float16. Both null
    means ATC's default, force_fp16, when ``framework`` is present (a compiled header); in a hand-written
    header without ``framework`` both null means "run the graph as it is". must_keep_origin_dtype / origin
    → the graph's own dtypes. (tests/fakes/pyacl/acl/_precision.py has the rules and sources.)
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
