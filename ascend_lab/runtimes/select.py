"""Opening the planned runtime (:class:`ascend_lab.prepare.RuntimePlan`): loading only, the artifacts
are prepared already."""

from __future__ import annotations


def open_runtime(plan, cfg, device):
    """Load the planned runtime on ``device`` (an ``ascend_lab.device.Device``); the caller times this as
    ``load_seconds``."""
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
