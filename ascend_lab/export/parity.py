"""Parity: ONNX Runtime against PyTorch on the same seeded inputs.

The cases differ in shape from the export's dummy input (so a frozen axis shows up as a failure) and
include a left-padded row; for the kv_cache graph they are a prefill into an empty cache and a decode
step over the cache the prefill wrote (the caller-side write of ``present_key_values`` included).

Tolerance (``export.parity_tol``, on the max absolute difference over all outputs): null takes
the per-dtype default below. float32 graphs agree to ~1e-6 on random-weight models; 1e-3 leaves
room for the larger logits of real checkpoints. float16/bfloat16 round every op's output
(ONNX Runtime and PyTorch order and fuse ops differently), so a bounded drift is expected.

Besides the gated max |Δ|, the check reports the relative L2 over every compared value, the smallest
cosine similarity of a logits row (hidden-state row for the hidden_states graph) and the largest
KL(torch ‖ onnxruntime) of a logits row, with the project's one definition of each
(:mod:`ascend_lab.accuracy.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.accuracy import metrics
from ascend_lab.errors import AscendLabError

DEFAULT_TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 2.5e-1}
# Cache slots the parity cases leave free beyond what they write (the capacity differs from every other dim).
SPARE_SLOTS = 3


def default_tolerance(dtype: str) -> float:
    return DEFAULT_TOLERANCE[dtype]


@dataclass
class ParityCase:
    name: str
    inputs: dict  # input name → torch tensor
    reference: dict  # output name → PyTorch output as a float64 numpy array
    real: dict = field(default_factory=dict)  # output name → bool mask over its leading dims: what to compare


@dataclass
class ParityResult:
    max_abs_diff: float
    rel_l2: float
    per_case: dict[str, float]  # case name → max abs diff
    token_mismatches: int = 0  # kv_cache: next_token entries that differ
    cosine: float = 1.0  # the smallest cosine similarity of a logits (hidden-state) row
    kl: float | None = None  # the largest KL(torch ‖ onnxruntime) of a logits row; None without logits


def build_cases(wrapper, contract: gc.GraphContract, batch: int, seq: int, dtype, seed: int) -> list[ParityCase]:
    """Seeded inputs and the PyTorch outputs for them (computed now, so the model can be freed)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, contract.dims.vocab_size, (batch, seq), generator=generator)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if batch > 1 and seq > 1:
        mask[-1, : max(1, seq // 4)] = 0  # one left-padded row
    with torch.no_grad():
        if contract.graph != "kv_cache":
            names = contract.input_names()
            case = _case(wrapper, contract, "forward", dict(zip(names, (ids, mask))))
            case.real = {contract.output_names()[0]: mask.numpy() != 0}
            return [case]
        pads = gc.left_pad_lengths(mask.numpy())
        cache = torch.zeros(contract.cache_shape(seq + 1 + SPARE_SLOTS, batch), dtype=dtype)
        prefill = _case(wrapper, contract, "prefill", {
            gc.INPUT_IDS: ids, gc.POSITION_IDS: torch.from_numpy(gc.positions(0, seq, pads)),
            gc.PAST_LENGTH: torch.tensor([0]), gc.PAD_LENGTHS: torch.from_numpy(pads), gc.PAST_KEY_VALUES: cache})
        prefill.real = {gc.PRESENT_KEY_VALUES: (mask.numpy() != 0).T}  # [seq, batch]
        cache = cache.clone()
        cache[:seq] = torch.from_numpy(prefill.reference[gc.PRESENT_KEY_VALUES]).to(dtype)
        next_ids = torch.from_numpy(prefill.reference[gc.NEXT_TOKEN].astype(np.int64)).reshape(batch, 1)
        decode = _case(wrapper, contract, "decode", {
            gc.INPUT_IDS: next_ids, gc.POSITION_IDS: torch.from_numpy(gc.positions(seq, 1, pads)),
            gc.PAST_LENGTH: torch.tensor([seq]), gc.PAD_LENGTHS: torch.from_numpy(pads), gc.PAST_KEY_VALUES: cache})
        return [prefill, decode]


def _case(wrapper, contract: gc.GraphContract, name: str, inputs: dict) -> ParityCase:
    outputs = wrapper(*(inputs[n] for n in contract.input_names()))
    if not isinstance(outputs, (tuple, list)):
        outputs = (outputs,)
    reference = {n: _numpy(o).astype(np.float64) for n, o in zip(contract.output_names(), outputs)}
    return ParityCase(name, inputs, reference)


def _numpy(tensor) -> np.ndarray:
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    return tensor.numpy()


def compare(cases: list[ParityCase], onnx_path) -> ParityResult:
    """Run every case through ONNX Runtime (CPU) and compare with the stored PyTorch outputs.

    Only real-token positions count: a padded query attends to nothing, so its output is arbitrary
    (in float16 the two runtimes round that all-masked softmax differently), and the keys/values at
    padded positions are never attended to.
    """
    from ascend_lab.runtimes.onnxruntime.runtime import open_session

    try:
        session = open_session(onnx_path, intra_op_threads=1)
    except AscendLabError as exc:
        hint = (" ONNX Runtime's CPU provider lacks kernels for some ops in this dtype (bfloat16 in particular), "
                "and the parity check needs it: export with model.dtype=float32 or float16."
                if "NOT_IMPLEMENTED" in str(exc) else "")
        raise AscendLabError(f"ONNX Runtime cannot load {onnx_path} for the parity check: {exc}{hint}") from exc
    compared_ref, compared_out = [], []  # every finite compared value, for the overall relative L2
    worst, mismatches = 0.0, 0
    cosine, kl = 1.0, None
    per_case = {}
    output_names = [o.name for o in session.get_outputs()]
    for case in cases:
        feeds = {name: _to_ort(value) for name, value in case.inputs.items()}
        try:
            got = dict(zip(output_names, session.run(output_names, feeds)))
        except Exception as exc:
            shapes = {k: tuple(v.shape) for k, v in case.inputs.items()}
            raise AscendLabError(f"ONNX Runtime failed on the parity case {case.name} {shapes}: "
                                 f"{str(exc).strip().splitlines()[0][:400]}") from exc
        case_worst = 0.0
        for name, ref in case.reference.items():
            out = np.asarray(got[name], dtype=np.float64)
            if out.shape != ref.shape:
                raise AscendLabError(f"parity case {case.name}: ONNX output {name} shape {out.shape} != PyTorch "
                                     f"{ref.shape} (a dynamic axis was frozen at export)")
            if name == gc.NEXT_TOKEN:  # integer picks: counted, not measured
                mismatches += int(np.sum(out != ref))
                continue
            if name in case.real:
                out, ref = out[case.real[name]], ref[case.real[name]]
            if not np.all(np.isfinite(out - ref)):  # NaN/inf on either side: never within tolerance
                case_worst = float("inf")
                continue
            case_worst = max(case_worst, float(metrics.max_abs_diff(ref.ravel(), out.ravel())))
            compared_ref.append(ref.ravel())
            compared_out.append(out.ravel())
            if name in (gc.LOGITS, gc.HIDDEN_STATES) and ref.size:
                rows_ref, rows_out = ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1])
                cosine = min(cosine, float(np.min(metrics.cosine_similarity(rows_ref, rows_out))))
                if name == gc.LOGITS:
                    kl = max(kl or 0.0, float(np.max(metrics.kl_divergence(rows_ref, rows_out))))
        per_case[case.name] = case_worst
        worst = max(worst, case_worst)
    del session
    rel = 0.0
    if compared_ref:
        rel = float(metrics.relative_l2(np.concatenate(compared_ref), np.concatenate(compared_out)))
    return ParityResult(max_abs_diff=worst, rel_l2=rel, per_case=per_case, token_mismatches=mismatches,
                        cosine=cosine, kl=kl)


def _to_ort(tensor):
    import torch

    if isinstance(tensor, torch.Tensor) and tensor.dtype == torch.bfloat16:
        import onnxruntime as ort

        # bfloat16 has no numpy dtype: hand ORT the raw bits as an OrtValue of element type bfloat16.
        bits = tensor.detach().cpu().contiguous().view(torch.int16).numpy()
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx_element_type=16)
    return tensor.detach().cpu().numpy()
