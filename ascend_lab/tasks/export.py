"""task=export: the model as an ONNX graph (cached), checked and parity-tested against PyTorch."""

from __future__ import annotations

from ascend_lab.config import AppConfig
from ascend_lab.context import JobContext
from ascend_lab.export import ensure_exported, exported_summary
from ascend_lab.report import format_table


def run(cfg: AppConfig, ctx: JobContext) -> dict:
    exported = ensure_exported(cfg, ctx)
    meta = exported.extra
    rows = [
        ("model", f"{cfg.model.name} ({cfg.model.weights} weights, {exported.dtype})"),
        ("graph", f"{exported.graph} (opset {meta.get('opset')}, {meta.get('exporter')})"),
        ("path", exported.onnx_path),
        ("sha256", exported.sha256),
        ("size (MB)", meta["onnx_size_mb"]),
        ("external data", "yes" if meta.get("external_data") else "no"),
        ("inputs", ", ".join(_short(exported.input_names))),
        ("outputs", ", ".join(_short(exported.output_names))),
        ("parity max |ort - torch|", meta["parity_max_abs_diff"]),
        ("parity rel L2", meta["parity_rel_l2"]),
        ("cache", "hit" if exported.cache_hit else "miss (exported now)"),
        ("export seconds" + (" (original export)" if exported.cache_hit else ""), meta["export_seconds"]),
    ]
    table = format_table(["export", "value"], rows, title="ascend_lab export")
    print(table)
    ctx.tracker.log_text(table + "\n", "export.txt")
    return exported_summary(exported)


def _short(names: list[str]) -> list[str]:
    """Per-layer cache names collapse to one pattern so the table stays readable."""
    head = [n for n in names if not n.startswith(("past_key_values.", "present."))]
    layers = len([n for n in names if n.startswith(("past_key_values.", "present."))]) // 2
    if layers:
        prefix = "past_key_values" if any(n.startswith("past_key_values.") for n in names) else "present"
        head.append(f"{prefix}.{{0..{layers - 1}}}.{{key,value}}")
    return head
