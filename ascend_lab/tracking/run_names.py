"""Run names that read in MLflow's runs table, whose Run Name column shows about twenty characters.

A name is the task, then what sets this run apart, in short form: ``bench b=4 rt=onnxruntime`` for a sweep's
child (only the keys the sweep varies), ``bench sweep b=1,4,8`` for its parent, ``bench b=4`` for a pipeline
stage. A key reads as its usual short form (:data:`SHORT_KEYS`), else as its last part
(``benchmark.seq_len`` → ``seq_len``); every run keeps the full keys as params.
"""

from __future__ import annotations

from typing import Iterable, Mapping

# The keys swept most often, as an Ascend or GPU engineer abbreviates them.
SHORT_KEYS = {
    "benchmark.batch_size": "b",
    "benchmark.batch_sizes": "bs",
    "benchmark.seq_len": "seq",
    "benchmark.new_tokens": "new",
    "runtime": "rt",
    "runtime.name": "rt",
    "device": "dev",
    "device.name": "dev",
    "atc.precision_mode": "precision",
    "atc.op_select_implmode": "implmode",
    "export.quantize": "quant",
}
NAME_MAX = 250  # MLflow's limit on a run name
# Command-line keys that say how a job is run or recorded, never what it is.
NOT_NAMED = ("task", "hydra", "tracking", "verbose")


def override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0].split("@")[0].strip()


def short_key(key: str) -> str:
    return SHORT_KEYS.get(key, key.rsplit(".", 1)[-1].rsplit("/", 1)[-1])


def short_form(key: str, value: object) -> str:
    return f"{short_key(key)}={value}"


def named(overrides: Iterable[str], keys: Iterable[str] | None = None) -> list[str]:
    """The overrides a name shows: those of ``keys`` where given, else every one but how the job runs."""
    wanted = set(keys) if keys is not None else None
    kept = []
    for override in overrides:
        key = override_key(override)
        if key.split(".", 1)[0].split("/", 1)[0] in NOT_NAMED or (wanted is not None and key not in wanted):
            continue
        kept.append(short_form(key, override.partition("=")[2]))
    return kept


def run_name(task: str, parts: Iterable[str]) -> str:
    return " ".join([task, *parts])[:NAME_MAX]


def job_name(task: str, overrides: Iterable[str], swept: Iterable[str] | None = None) -> str:
    """A job's run: ``task`` and its command-line overrides (a sweep's child: only the swept keys)."""
    return run_name(task, named(overrides, swept))


def sweep_name(task: str, swept: Mapping[str, str], preset: str | None = None) -> str:
    """A sweep's parent: ``task sweep`` and each swept key with its values (``preset``: the search preset)."""
    head = [f"search {preset}" if preset else "sweep"]
    return run_name(task, [*head, *(short_form(k, v.replace(" ", "")) for k, v in swept.items())])


def stage_name(stage: str, values: Mapping[str, object]) -> str:
    """A pipeline stage's run: ``bench b=4``."""
    return run_name(stage, [short_form(k, v) for k, v in values.items()])
