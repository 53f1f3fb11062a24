"""Running the same prompts through a reference and a candidate runtime, and measuring the difference.

Each prompt is generated alone (batch 1, no padding), ``new_tokens`` greedy tokens, through the runtime's
kv_cache engine with ``keep_logits``: so the reference, the candidate and every runtime
(torch, onnxruntime, pyACL) execute the same sequence of graph calls, and the figures compare graphs, not
batching or padding.

- *Teacher-forced*: the candidate is fed the reference's tokens (:meth:`CacheEngine.step` with tokens), so
  step ``k`` of both sides sees the same context; one early flip does not make every later step differ.
  This is what the gate judges.
- *Free-running*: the candidate feeds its own picks, as it would when serving. Its logits figures stop
  meaning much after the first differing token (the contexts differ from there on); the common-prefix
  length says where that was.

Step ``0`` is the prompt's prefill (the logits of its last position), step ``k`` the ``k``-th decode step.
The reference's own generation is both the teacher and the free-running reference.

Layer drift (:func:`layer_hidden`, :func:`layer_drift`) runs the prompts' prefill through the graph's debug
variant on both sides and compares each decoder layer's hidden state at the last position: the relative
error of the residual stream grows where a layer computes differently, so the first layer over the
tolerance is where the drift starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ascend_lab.accuracy import metrics

MODES = ("tf", "fr")  # teacher-forced, free-running: the prefixes of the metric names
MODE_NAMES = {"tf": "teacher-forced", "fr": "free-running"}


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: tuple[int, ...]  # token ids (at least one)


@dataclass(frozen=True)
class Decoded:
    """One prompt's generation on one side."""

    tokens: np.ndarray  # [new_tokens] int64: this side's own greedy picks
    logits: np.ndarray  # [new_tokens, vocab] float32: the logits of each step


def _engine(runtime, prompts: list[Prompt], new_tokens: int, capacity_limit: int):
    longest = max(len(p.ids) for p in prompts)
    engine = runtime.engine(longest + new_tokens, capacity_limit, keep_logits=True)
    engine.prepare(1, longest, new_tokens)
    return engine


def decode(runtime, prompts: list[Prompt], new_tokens: int, capacity_limit: int,
           teachers: list[np.ndarray] | None = None) -> list[Decoded]:
    """Greedy-generate ``new_tokens`` per prompt on ``runtime``, keeping every step's logits; with
    ``teachers`` (one [new_tokens] token array per prompt) step ``k`` is fed ``teachers[i][k - 1]`` instead of
    this side's own pick (teacher forcing)."""
    engine = _engine(runtime, prompts, new_tokens, capacity_limit)
    out = []
    for i, prompt in enumerate(prompts):
        ids = np.asarray([prompt.ids], dtype=np.int64)
        engine.prefill(ids, np.ones_like(ids))
        for k in range(1, new_tokens):
            engine.step(None if teachers is None else teachers[i][k - 1:k])
        # keep_logits holds every execution's: the prompt's chunks, then one per step; the last chunk's
        # logits are the prompt's last position, the first step's.
        steps = engine.logits[engine.prefill_executions - 1:]
        logits = np.stack([np.asarray(s, dtype=np.float32)[0] for s in steps])
        out.append(Decoded(engine.generated()[0], logits))
    return out


@dataclass
class PromptComparison:
    """One prompt's figures: per step for each mode, and the free-running common prefix."""

    prompt: Prompt
    steps: dict[str, dict[str, np.ndarray]]  # mode → metric → [new_tokens]
    common_prefix: int  # free-running: leading tokens both sides generated alike
    reference_tokens: np.ndarray
    candidate_tokens: np.ndarray  # free-running


@dataclass
class Comparison:
    prompts: list[PromptComparison]
    new_tokens: int
    metric_names: tuple[str, ...] = field(default=tuple(metrics.LOGIT_METRICS))

    def per_step(self) -> dict[str, np.ndarray]:
        """``<mode>_<metric>`` → [new_tokens]: the mean over prompts at each step."""
        return {f"{mode}_{name}": np.mean([p.steps[mode][name] for p in self.prompts], axis=0)
                for mode in MODES for name in self.metric_names}

    def aggregate(self) -> dict[str, float]:
        """``<mode>_<metric>_<mean|min|max>`` over every prompt and step, and ``fr_common_prefix_*`` over
        prompts (the run's metrics and the gate's inputs)."""
        out = {}
        for mode in MODES:
            for name in self.metric_names:
                values = np.concatenate([p.steps[mode][name] for p in self.prompts])
                out.update(_aggregates(f"{mode}_{name}", values))
        out.update(_aggregates("fr_common_prefix", np.array([p.common_prefix for p in self.prompts], float)))
        return out


def _aggregates(name: str, values: np.ndarray) -> dict[str, float]:
    # NaN propagates (np.mean/min/max): a non-finite candidate fails every gate instead of hiding.
    return {f"{name}_mean": float(np.mean(values)), f"{name}_min": float(np.min(values)),
            f"{name}_max": float(np.max(values))}


def compare(prompts: list[Prompt], reference: list[Decoded], teacher_forced: list[Decoded],
            free_running: list[Decoded]) -> Comparison:
    """The figures of a candidate's teacher-forced and free-running generations against the reference's."""
    rows = []
    for prompt, ref, tf, fr in zip(prompts, reference, teacher_forced, free_running):
        steps = {"tf": metrics.logit_metrics(ref.logits, tf.logits), "fr": metrics.logit_metrics(ref.logits, fr.logits)}
        rows.append(PromptComparison(prompt, steps, metrics.common_prefix_length(ref.tokens, fr.tokens),
                                     ref.tokens, fr.tokens))
    return Comparison(rows, len(reference[0].tokens) if reference else 0)


# ------------------------------------------------------------------------------------------------
# Layer drift


def layer_hidden(runtime, prompts: list[Prompt], capacity_limit: int) -> list[np.ndarray]:
    """Each prompt's per-layer hidden states at its last position, [layers, hidden] float32, from the
    prefill of the graph's debug variant (``export.layer_outputs``) on ``runtime``."""
    engine = _engine(runtime, prompts, 1, capacity_limit)
    out = []
    for prompt in prompts:
        ids = np.asarray([prompt.ids], dtype=np.int64)
        engine.prefill(ids, np.ones_like(ids))
        out.append(np.asarray(engine.last_layer_hidden(), dtype=np.float32)[:, 0, :])
    return out


@dataclass
class LayerDrift:
    """Per prompt and layer: relative error and cosine of the candidate's hidden state against the reference's."""

    rel_error: np.ndarray  # [prompts, layers]
    cosine: np.ndarray  # [prompts, layers]
    tolerance: float

    @property
    def worst_rel_error(self) -> np.ndarray:
        """[layers]: the largest relative error over the prompts."""
        return np.max(self.rel_error, axis=0)

    @property
    def worst_cosine(self) -> np.ndarray:
        """[layers]: the smallest cosine over the prompts."""
        return np.min(self.cosine, axis=0)

    @property
    def first_over(self) -> int | None:
        """The first layer whose worst relative error exceeds the tolerance (NaN counts as over), or None."""
        over = np.flatnonzero(~(self.worst_rel_error <= self.tolerance))
        return int(over[0]) if over.size else None


def layer_drift(reference: list[np.ndarray], candidate: list[np.ndarray], tolerance: float) -> LayerDrift:
    """Compare :func:`layer_hidden` of both sides (rows: layers, compared over the model width)."""
    rel = np.stack([metrics.relative_l2(r, c) for r, c in zip(reference, candidate)])
    cos = np.stack([metrics.cosine_similarity(r, c) for r, c in zip(reference, candidate)])
    return LayerDrift(rel, cos, tolerance)
