"""Parity: ONNX Runtime against PyTorch on the same seeded inputs.

The cases differ in shape from the export's dummy input (so a frozen axis shows up as a failure),
include a left-padded row, and, for the KV-cache graph, cover a prefill with an empty past and
a decode step fed the prefill's present keys/values.

Tolerance (``export.parity_tol``, on the max absolute difference over all outputs): null takes
the per-dtype default below. float32 graphs agree to ~1e-6 on random-weight models; 1e-3 leaves
room for the larger logits of real checkpoints. float16/bfloat16 round every op's output
(ONNX Runtime and PyTorch order and fuse ops differently), so a bounded drift is expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ascend_lab.errors import AscendLabError

DEFAULT_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 2.5e-1}


def default_tolerance(dtype: str) -> float:
    return DEFAULT_TOLERANCE[dtype]


@dataclass
class ParityCase:
    name: str
    inputs: tuple  # torch tensors, in graph input order
    reference: list  # torch outputs as float64 numpy arrays


@dataclass
class ParityResult:
    max_abs_diff: float
    rel_l2: float
    per_case: dict[str, float]  # case name → max abs diff


def build_cases(wrapper, graph: str, config, batch: int, seq: int, dtype, seed: int) -> list[ParityCase]:
    """Seeded inputs and the PyTorch outputs for them (computed now, so the model can be freed)."""
    import torch

    from ascend_lab.export.wrappers import empty_past

    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, config.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and seq > 1:
        mask[-1, : max(1, seq // 4)] = 0  # one left-padded row
    cases = []
    with torch.no_grad():
        if graph != "kv_cache":
            cases.append(_case(wrapper, "forward", (ids, mask)))
            return cases
        prefill = _case(wrapper, "prefill", (ids, mask, *empty_past(config, batch, dtype)))
        outputs = wrapper(*prefill.inputs)
        next_ids = outputs[0][:, -1:, :].float().argmax(-1)
        step_mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long)], dim=1)
        decode = _case(wrapper, "decode", (next_ids, step_mask, *outputs[1:]))
        return [prefill, decode]


def _case(wrapper, name: str, inputs: tuple) -> ParityCase:
    outputs = wrapper(*inputs)
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    return ParityCase(name, tuple(inputs), [_numpy(o).astype(np.float64) for o in outputs])


def _numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def compare(cases: list[ParityCase], onnx_path, input_names: list[str], output_names: list[str]) -> ParityResult:
    """Run every case through ONNX Runtime (CPU) and compare with the stored PyTorch outputs.

    Only real-token positions count: a left-padded query row attends to nothing, so its output
    is arbitrary (in float16 the two runtimes round that all-masked softmax differently), and
    the keys/values at padded positions are never attended to.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:400]
        hint = (" ONNX Runtime's CPU provider lacks kernels for some ops in this dtype (bfloat16 in particular), "
                "and the parity check needs it: export with model.dtype=float32 or float16."
                if "NOT_IMPLEMENTED" in first else "")
        raise AscendLabError(f"ONNX Runtime cannot load {onnx_path} for the parity check: {first}.{hint}") from exc
    diff_sq = ref_sq = 0.0
    worst = 0.0
    per_case = {}
    for case in cases:
        feeds = {name: _to_ort(value) for name, value in zip(input_names, case.inputs)}
        try:
            got = session.run(None, feeds)
        except Exception as exc:
            shapes = {k: v.shape for k, v in feeds.items() if k in ("input_ids", "attention_mask")}
            raise AscendLabError(f"ONNX Runtime failed on the parity case {case.name} {shapes}: "
                                 f"{str(exc).strip().splitlines()[0][:400]}") from exc
        mask = case.inputs[1].numpy() != 0
        query_mask = mask[:, mask.shape[1] - case.inputs[0].shape[1]:]
        case_worst = 0.0
        for name, out, ref in zip(output_names, got, case.reference):
            out = np.asarray(out, dtype=np.float64)
            if out.shape != ref.shape:
                raise AscendLabError(f"parity case {case.name}: ONNX output {name} shape {out.shape} != PyTorch "
                                     f"{ref.shape} (a dynamic axis was frozen at export)")
            if name.startswith("present."):  # [batch, heads, total, head_dim]: keep real key positions
                out, ref = out.transpose(0, 2, 1, 3)[mask], ref.transpose(0, 2, 1, 3)[mask]
            else:  # [batch, seq, ...]: keep real query positions
                out, ref = out[query_mask], ref[query_mask]
            delta = out - ref
            if not np.all(np.isfinite(delta)):  # NaN/inf on either side: never within tolerance
                case_worst = float("inf")
                continue
            case_worst = max(case_worst, float(np.max(np.abs(delta))) if delta.size else 0.0)
            diff_sq += float(np.sum(delta * delta))
            ref_sq += float(np.sum(ref * ref))
        per_case[case.name] = case_worst
        worst = max(worst, case_worst)
    del session
    rel = (diff_sq ** 0.5) / (ref_sq ** 0.5) if ref_sq > 0 else diff_sq ** 0.5
    return ParityResult(max_abs_diff=worst, rel_l2=rel, per_case=per_case)


def _to_ort(tensor):
    import torch

    if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16:
        import onnxruntime as ort

        # bfloat16 has no numpy dtype: hand ORT the raw bits as an OrtValue of element type bfloat16.
        bits = tensor.detach().cpu().contiguous().view(torch.int16).numpy()
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx_element_type=16)
    return tensor.detach().cpu().numpy()
