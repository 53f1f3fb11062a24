"""What an accuracy run shows and records, defined once: the per-prompt table, the per-step figures and
plot, and the layer report's table and plot.

Files are written into one folder (the job's ``accuracy/`` output folder, so they exist with
``tracking=off`` too) and that folder is logged as the run's ``accuracy/`` artifacts; metrics go through the
tracker: the aggregates (``tf_cosine_min``, ``tf_kl_mean``, ``fr_common_prefix_mean``, …), the per-step
means over prompts as ``step/<mode>_<metric>`` with the decode step as MLflow's step, and the layer
report's ``layer/rel_error`` and ``layer/cosine`` with the layer index as the step.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable

import numpy as np

from ascend_lab.accuracy.compare import MODE_NAMES, MODES, Comparison, LayerDrift, PromptComparison
from ascend_lab.report import format_table, markdown_table

PROMPTS_FILES = ("accuracy_prompts.csv", "accuracy_prompts.md")
STEPS_FILES = ("accuracy_steps.csv", "accuracy_steps.png")
LAYER_FILES = ("layer_drift.csv", "layer_drift.md", "layer_drift.png")
PROMPT_SHOWN_CHARS = 28  # longer prompts are cut in the table (the csv keeps them whole)
# Log-scale plots of differences: an exact match (0) is drawn at this floor instead of vanishing.
PLOT_FLOOR = 1e-16


def _cosine(v: float) -> str:
    return f"{v:.6f}"


def _small(v: float) -> str:
    return f"{v:.2e}"


def _share(v: float) -> str:
    return f"{v:.3f}"


# (header, figure of one prompt, of all prompts (from the aggregate), text form)
PromptColumn = tuple[str, Callable[[PromptComparison], float], str, Callable[[float], str]]
PROMPT_COLUMNS: tuple[PromptColumn, ...] = (
    ("top-1 TF", lambda p: float(np.mean(p.steps["tf"]["top1_agreement"])), "tf_top1_agreement_mean", _share),
    ("top-5 TF", lambda p: float(np.mean(p.steps["tf"]["top5_overlap"])), "tf_top5_overlap_mean", _share),
    ("min cosine TF", lambda p: float(np.min(p.steps["tf"]["cosine"])), "tf_cosine_min", _cosine),
    ("mean KL TF", lambda p: float(np.mean(p.steps["tf"]["kl"])), "tf_kl_mean", _small),
    ("max |Δ| TF", lambda p: float(np.max(p.steps["tf"]["max_abs_diff"])), "tf_max_abs_diff_max", _small),
    ("rel L2 TF", lambda p: float(np.mean(p.steps["tf"]["rel_l2"])), "tf_rel_l2_mean", _small),
    ("common prefix FR", lambda p: float(p.common_prefix), "fr_common_prefix_mean", lambda v: f"{v:.3g}"),
    ("top-1 FR", lambda p: float(np.mean(p.steps["fr"]["top1_agreement"])), "fr_top1_agreement_mean", _share),
)


def _shown(text: str) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= PROMPT_SHOWN_CHARS else one_line[:PROMPT_SHOWN_CHARS - 1] + "…"


def prompt_table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per prompt, then the figures over all prompts."""
    headers = ["prompt", "tokens", *(c[0] for c in PROMPT_COLUMNS)]
    rows = [[_shown(p.prompt.text), str(len(p.prompt.ids)), *(fmt(fig(p)) for _, fig, _, fmt in PROMPT_COLUMNS)]
            for p in comparison.prompts]
    aggregate = comparison.aggregate()
    rows.append(["all prompts", "", *(fmt(aggregate[key]) for _, _, key, fmt in PROMPT_COLUMNS)])
    return headers, rows


def prompt_csv(comparison: Comparison) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "prompt_tokens", *(c[2].rsplit("_", 1)[0] for c in PROMPT_COLUMNS),
                     "reference_tokens", "candidate_tokens_fr"])
    for p in comparison.prompts:
        writer.writerow([p.prompt.text, len(p.prompt.ids), *(repr(fig(p)) for _, fig, _, _ in PROMPT_COLUMNS),
                         " ".join(map(str, p.reference_tokens.tolist())),
                         " ".join(map(str, p.candidate_tokens.tolist()))])
    return out.getvalue()


def steps_csv(comparison: Comparison) -> str:
    per_step = comparison.per_step()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", *per_step])
    for step in range(comparison.new_tokens):
        writer.writerow([step, *(repr(float(v[step])) for v in per_step.values())])
    return out.getvalue()


def steps_plot(comparison: Comparison, title: str):
    """The figures against the decode step (means over prompts): teacher-forced solid, free-running dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_step = comparison.per_step()
    steps = np.arange(comparison.new_tokens)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    panels = (
        (axes[0, 0], "1 − cosine", lambda m: 1.0 - per_step[f"{m}_cosine"], True),
        (axes[0, 1], "KL(reference ‖ candidate) [nats]", lambda m: per_step[f"{m}_kl"], True),
        (axes[1, 0], "relative L2 of the logits", lambda m: per_step[f"{m}_rel_l2"], True),
        (axes[1, 1], "top-1 agreement / top-5 overlap", None, False),
    )
    for ax, label, values, log in panels:
        for mode, style in zip(MODES, ("-", "--")):
            if values is None:
                ax.plot(steps, per_step[f"{mode}_top1_agreement"], style, marker=".", label=f"top-1 {MODE_NAMES[mode]}")
                ax.plot(steps, per_step[f"{mode}_top5_overlap"], style, alpha=0.6, label=f"top-5 {MODE_NAMES[mode]}")
            else:
                ax.plot(steps, np.maximum(values(mode), PLOT_FLOOR), style, marker=".", label=MODE_NAMES[mode])
        if log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(-0.05, 1.05)
        ax.set(ylabel=label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[1]:
        ax.set_xlabel("decode step (0: the prompt's prefill)")
    fig.suptitle(title + f"\n(means over {len(comparison.prompts)} prompts; exact matches drawn at {PLOT_FLOOR:g})",
                 fontsize="medium")
    fig.tight_layout()
    return fig


def write_comparison(comparison: Comparison, out_dir: Path, title: str, verdict_line: str) -> str:
    """Write the per-prompt table (csv, md) and the per-step figures (csv, png) into ``out_dir``; returns the
    console table."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    headers, rows = prompt_table(comparison)
    (out_dir / PROMPTS_FILES[0]).write_text(prompt_csv(comparison), encoding="utf-8")
    note = "TF: teacher-forced (both sides fed the reference's tokens), FR: free-running.\n\n" + verdict_line
    (out_dir / PROMPTS_FILES[1]).write_text(markdown_table(headers, rows, title, note), encoding="utf-8")
    (out_dir / STEPS_FILES[0]).write_text(steps_csv(comparison), encoding="utf-8")
    fig = steps_plot(comparison, title)
    fig.savefig(out_dir / STEPS_FILES[1], dpi=100)
    plt.close(fig)
    return format_table(headers, rows, title=title)


def log_comparison(tracker, comparison: Comparison) -> None:
    """The aggregates as run metrics, and the per-step means as ``step/…`` series (MLflow step = decode step)."""
    tracker.log_metrics(comparison.aggregate())
    per_step = comparison.per_step()
    for step in range(comparison.new_tokens):
        tracker.log_metrics({f"step/{name}": float(values[step]) for name, values in per_step.items()}, step=step)


# ------------------------------------------------------------------------------------------------
# Layer report


def layer_table(drift: LayerDrift) -> tuple[list[str], list[list[str]]]:
    headers = ["layer", "rel error (worst prompt)", "rel error (mean)", "cosine (worst prompt)", "over tolerance"]
    worst, mean, cos = drift.worst_rel_error, np.mean(drift.rel_error, axis=0), drift.worst_cosine
    first = drift.first_over
    rows = [[str(i), _small(worst[i]), _small(mean[i]), _cosine(cos[i]),
             ("FIRST" if i == first else "yes") if not worst[i] <= drift.tolerance else ""]
            for i in range(len(worst))]
    return headers, rows


def layer_line(drift: LayerDrift) -> str:
    first = drift.first_over
    if first is None:
        return (f"layer report: no decoder layer's hidden state is over the tolerance {drift.tolerance:g} "
                f"(worst: {float(np.max(drift.worst_rel_error)):.3g})")
    return (f"layer report: layer {first} is the first to drift: relative error {drift.worst_rel_error[first]:.3g} > "
            f"tolerance {drift.tolerance:g}" + (f" (layer {first - 1}: {drift.worst_rel_error[first - 1]:.3g})"
                                                  if first > 0 else ""))


def layer_plot(drift: LayerDrift, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(drift.rel_error.shape[1])
    fig, (ax_err, ax_cos) = plt.subplots(1, 2, figsize=(11, 4))
    ax_err.plot(layers, np.maximum(drift.worst_rel_error, PLOT_FLOOR), marker="o", label="worst prompt")
    ax_err.plot(layers, np.maximum(np.mean(drift.rel_error, axis=0), PLOT_FLOOR), marker=".", alpha=0.6, label="mean")
    ax_err.axhline(drift.tolerance, color="red", linestyle=":", label=f"tolerance {drift.tolerance:g}")
    if drift.first_over is not None:
        ax_err.axvline(drift.first_over, color="red", alpha=0.3, label=f"first drifting layer: {drift.first_over}")
    ax_err.set(xlabel="decoder layer", ylabel="relative error of the hidden state", yscale="log")
    ax_cos.plot(layers, np.maximum(1.0 - drift.worst_cosine, PLOT_FLOOR), marker="o")
    ax_cos.set(xlabel="decoder layer", ylabel="1 − cosine (worst prompt)", yscale="log")
    for ax in (ax_err, ax_cos):
        ax.grid(True, alpha=0.3)
    ax_err.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


def write_layers(drift: LayerDrift, out_dir: Path, title: str) -> str:
    """Write the layer report (csv, md, png) into ``out_dir``; returns the console table and its verdict line."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    headers, rows = layer_table(drift)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["layer", "rel_error_worst", "rel_error_mean", "cosine_worst", "over_tolerance"])
    for i in range(drift.rel_error.shape[1]):
        writer.writerow([i, repr(float(drift.worst_rel_error[i])), repr(float(np.mean(drift.rel_error[:, i]))),
                         repr(float(drift.worst_cosine[i])), not drift.worst_rel_error[i] <= drift.tolerance])
    (out_dir / LAYER_FILES[0]).write_text(out.getvalue(), encoding="utf-8")
    (out_dir / LAYER_FILES[1]).write_text(markdown_table(headers, rows, title, layer_line(drift)), encoding="utf-8")
    fig = layer_plot(drift, title)
    fig.savefig(out_dir / LAYER_FILES[2], dpi=100)
    plt.close(fig)
    return format_table(headers, rows, title=title) + "\n" + layer_line(drift)


def log_layers(tracker, drift: LayerDrift) -> None:
    first = drift.first_over
    tracker.log_metrics({"layer_first_drift": -1 if first is None else first,
                         "layer_rel_error_max": float(np.max(drift.worst_rel_error))})
    for i in range(drift.rel_error.shape[1]):
        tracker.log_metrics({"layer/rel_error": float(drift.worst_rel_error[i]),
                             "layer/cosine": float(drift.worst_cosine[i])}, step=i)
