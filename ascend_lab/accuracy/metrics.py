"""The one definition of each accuracy metric in ascend_lab.

Every function compares a *reference* with a *candidate* along the last axis (a logits row over the
vocabulary, a hidden state over the model width) and returns one value per row. Everything is computed
in float64 whatever the inputs' dtype, so that the rounding of the measurement stays far below the
float16/int8 drift it measures, and a float32 candidate identical to its reference scores exactly
cosine 1, KL 0, max |Δ| 0.

Used by ``task=accuracy`` (per decode step and per layer) and by the export's parity check
(:mod:`ascend_lab.export.parity`), so each figure means the same thing wherever it is reported.
Non-finite inputs give non-finite figures (NaN compares false against every threshold, so a gate fails).
"""

from __future__ import annotations

import numpy as np

# top-k overlap's k: how many of the reference's most likely tokens the candidate is asked to keep.
TOP_K = 5


def _rows(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def cosine_similarity(reference, candidate) -> np.ndarray:
    """cos ∠(reference, candidate) per row, in [-1, 1]: 1 is the same direction whatever the scale. Two zero
    rows are alike (1); a zero row against a non-zero one is unrelated (0)."""
    r, c = _rows(reference), _rows(candidate)
    dot = np.sum(r * c, axis=-1)
    # sqrt of the product (not the product of two square roots): a row against itself is exactly 1.
    norms = np.sqrt(np.sum(r * r, axis=-1) * np.sum(c * c, axis=-1))
    both_zero = (np.sum(r * r, axis=-1) == 0) & (np.sum(c * c, axis=-1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return np.clip(cos, -1.0, 1.0)


def max_abs_diff(reference, candidate) -> np.ndarray:
    """max |candidate − reference| per row (0 for empty rows)."""
    delta = np.abs(_rows(candidate) - _rows(reference))
    if delta.shape[-1] == 0:
        return np.zeros(delta.shape[:-1])
    return np.max(delta, axis=-1)


def relative_l2(reference, candidate) -> np.ndarray:
    """‖candidate − reference‖ / ‖reference‖ per row (the absolute ‖Δ‖ where the reference row is zero)."""
    r, c = _rows(reference), _rows(candidate)
    diff = np.sqrt(np.sum((c - r) ** 2, axis=-1))
    norm = np.sqrt(np.sum(r * r, axis=-1))
    return np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), diff)


def log_softmax(logits) -> np.ndarray:
    """log softmax over the last axis in float64 (max-subtracted, so large logits do not overflow)."""
    x = _rows(logits)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def kl_divergence(reference_logits, candidate_logits) -> np.ndarray:
    """KL(softmax(reference) ‖ softmax(candidate)) per row, in nats: the information lost when the candidate's
    next-token distribution stands in for the reference's (0 when they are the same; rounding below 0 is
    clipped)."""
    log_p, log_q = log_softmax(reference_logits), log_softmax(candidate_logits)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    return np.maximum(kl, 0.0)


def top1_agreement(reference_logits, candidate_logits) -> np.ndarray:
    """1.0 where both pick the same greedy token (argmax; ties go to the lower id on both sides), else 0.0."""
    same = np.argmax(_rows(reference_logits), axis=-1) == np.argmax(_rows(candidate_logits), axis=-1)
    return same.astype(np.float64)


def topk_overlap(reference_logits, candidate_logits, k: int = TOP_K) -> np.ndarray:
    """|top-k(reference) ∩ top-k(candidate)| / k per row: how much of the reference's short list survives."""
    r, c = _rows(reference_logits), _rows(candidate_logits)
    k = min(k, r.shape[-1])
    top_r = np.argpartition(-r, k - 1, axis=-1)[..., :k]
    top_c = np.argpartition(-c, k - 1, axis=-1)[..., :k]
    shared = (top_r[..., :, None] == top_c[..., None, :]).any(axis=-1).sum(axis=-1)
    return shared / k


def common_prefix_length(reference_tokens, candidate_tokens) -> int:
    """How many leading tokens two greedy generations share (free-running: where they part)."""
    r, c = np.asarray(reference_tokens).ravel(), np.asarray(candidate_tokens).ravel()
    n = min(r.size, c.size)
    differ = np.flatnonzero(r[:n] != c[:n])
    return int(differ[0]) if differ.size else n


# The per-row logits figures, by the name they are reported under (task=accuracy's metric names).
LOGIT_METRICS = {
    "cosine": cosine_similarity,
    "max_abs_diff": max_abs_diff,
    "rel_l2": relative_l2,
    "kl": kl_divergence,
    "top1_agreement": top1_agreement,
    "top5_overlap": topk_overlap,
}


def logit_metrics(reference_logits, candidate_logits) -> dict[str, np.ndarray]:
    """Every :data:`LOGIT_METRICS` figure per row of two [..., vocab] logits arrays."""
    return {name: fn(reference_logits, candidate_logits) for name, fn in LOGIT_METRICS.items()}
