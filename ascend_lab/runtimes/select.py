"""Opening the planned runtime (:class:`ascend_lab.prepare.RuntimePlan`): loading only, the artifacts
are prepared already."""

from __future__ import annotations


def open_runtime(plan, cfg, device):
    """Load the planned runtime on ``device`` (an ``ascend_lab.device.Device``); the caller times this as
    ``load_seconds``. Weights loaded into host memory (torch and onnxruntime on the CPU) are moved to huge pages
    (``runtime.huge_pages``; :mod:`ascend_lab.huge_pages`), the report kept as ``runtime.huge_pages``."""
    from ascend_lab.huge_pages import huge_pages_for_new_memory

    on_host = plan.name in ("torch", "onnxruntime") and device.kind == "cpu"
    with huge_pages_for_new_memory(cfg.runtime.huge_pages and on_host) as huge_pages:
        runtime = _load(plan, cfg, device)
    if on_host:
        runtime.huge_pages = huge_pages
    return runtime


def _load(plan, cfg, device):
    if plan.name == "torch":
        from ascend_lab.runtimes.torch_runtime import TorchRuntime

        return TorchRuntime.load(cfg, device)
    if plan.name == "onnxruntime":
        from ascend_lab.runtimes.onnxruntime_runtime import OnnxRuntime

        rt = cfg.runtime
        return OnnxRuntime(plan.onnx_path, plan.exported.contract, device.kind, device.index,
                           rt.intra_op_threads, rt.inter_op_threads, rt.graph_optimization)
    from ascend_lab.runtimes.acl import AclRuntime

    return AclRuntime(plan.compiled.om_path, device_id=cfg.device.index, contract=plan.exported.contract)


def tokenizer_for(cfg, runtime):
    """The model's tokenizer (the torch runtime already built it)."""
    if runtime.tokenizer is not None:
        return runtime.tokenizer
    from ascend_lab.models import build_tokenizer

    return build_tokenizer(cfg.model)
