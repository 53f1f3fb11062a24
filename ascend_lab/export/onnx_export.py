"""PyTorch → ONNX: one call of ``torch.onnx.export`` (TorchScript or dynamo exporter), named
dynamic axes on the graph's inputs and outputs, weights consolidated into one side file when the
model is over protobuf's 2 GB limit, and ``onnx.checker`` on the result (by path, so external
data is checked too)."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

from ascend_lab.config.export import ExportConfig
from ascend_lab.errors import AscendLabError

log = logging.getLogger(__name__)

PROTOBUF_LIMIT_BYTES = 2 * 1024 ** 3
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def wants_external_data(mode: str, param_bytes: int) -> bool:
    """``export.external_data``: auto → only when the weights would not fit one protobuf."""
    if mode == "always":
        return True
    if mode == "never":
        if param_bytes >= PROTOBUF_LIMIT_BYTES:
            raise AscendLabError(
                f"export.external_data=never, but the weights are {param_bytes / 1024 ** 3:.2f} GB and one ONNX "
                "file holds at most 2 GB; use export.external_data=auto.")
        return False
    return param_bytes >= PROTOBUF_LIMIT_BYTES * 0.9  # headroom for the graph itself


def export_raw(wrapper, args: tuple, out_dir: Path, *, input_names: list[str], output_names: list[str],
               axes: dict[str, dict[int, str]], cfg: ExportConfig, external_data: bool) -> Path:
    """Export ``wrapper(*args)`` into ``out_dir/raw/`` as the exporter writes it; returns the path.

    :func:`finalize` then writes the published form; the two are separate so that the caller can
    free the PyTorch model in between (a 1.8B model would otherwise be held twice).
    """
    import torch

    raw_dir = out_dir / "raw"
    raw_dir.mkdir(parents=True)
    raw_path = raw_dir / MODEL_FILE
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values are expected and noisy
        try:
            if cfg.exporter == "torchscript":
                torch.onnx.export(
                    wrapper, args, str(raw_path), input_names=input_names, output_names=output_names,
                    opset_version=cfg.opset, do_constant_folding=cfg.do_constant_folding,
                    dynamic_axes=axes if cfg.dynamic_axes else None, dynamo=False)
            else:
                torch.onnx.export(
                    wrapper, args, str(raw_path), input_names=input_names, output_names=output_names,
                    opset_version=cfg.opset, dynamic_shapes=_dynamo_shapes(input_names, axes) if cfg.dynamic_axes else None,
                    optimize=cfg.do_constant_folding, external_data=external_data, dynamo=True)
        except Exception as exc:
            raise AscendLabError(
                f"torch.onnx.export failed with export.exporter={cfg.exporter}, export.opset={cfg.opset}: "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}. "
                "Try the other export.exporter or a higher export.opset.") from exc
    return raw_path


def _dynamo_shapes(input_names: list[str], axes: dict[str, dict[int, str]]):
    """torch.export's form of the dynamic axes: AUTO dims per forward argument, in argument order.

    The names are put back on the ONNX inputs/outputs afterwards (:func:`finalize`), since
    torch.export names symbols itself.
    """
    from torch.export import Dim

    return tuple({axis: Dim.AUTO for axis in axes.get(name, {})} or None for name in input_names)


def finalize(raw_path: Path, out_dir: Path, input_names: list[str], output_names: list[str],
             axes: dict[str, dict[int, str]], external_data: bool) -> Path:
    """Name the dynamic dims and write ``out_dir/model.onnx`` (+ one ``model.onnx.data`` when
    external; the exporters write one file per tensor); removes the raw export."""
    import onnx

    path = out_dir / MODEL_FILE
    model = onnx.load(str(raw_path), load_external_data=True)
    _check_names(model, input_names, output_names)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for axis, name in axes.get(value.name, {}).items():
            if axis < len(dims):
                dims[axis].ClearField("dim_value")
                dims[axis].dim_param = name
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    del model
    shutil.rmtree(raw_path.parent)
    return path


def _check_names(model, input_names: list[str], output_names: list[str]) -> None:
    got_in = [v.name for v in model.graph.input]
    got_out = [v.name for v in model.graph.output]
    # The exporter drops inputs a graph does not use; ours uses all, so any difference is a bug.
    if got_in != input_names or got_out != output_names:
        raise AscendLabError(f"the exported graph's I/O names differ from the convention: inputs {got_in} "
                             f"(expected {input_names}), outputs {got_out} (expected {output_names})")


def check_model(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as exc:
        raise AscendLabError(f"onnx.checker rejected {path}: {str(exc).strip().splitlines()[0][:400]}") from exc


def graph_opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def model_files(path: Path, exclude: tuple[str, ...] = ("meta.json",)) -> list[Path]:
    """The model file, then its side files (external data) by name: what the sha256 covers, in order."""
    side = sorted(p for p in path.parent.iterdir() if p.is_file() and p != path and p.name not in exclude)
    return [path, *side]
