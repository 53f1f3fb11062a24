"""The one place task=serve opens what task=bench times: plan (export/compile through the caches), load, tokenizer.

Everything else in :mod:`ascend_lab.serve` talks to the :class:`ServedEngine` this yields, so a change in how tasks
open a runtime changes this module only.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator

from ascend_lab.errors import ConfigError


@dataclass
class ServedEngine:
    plan: Any  # ascend_lab.prepare.RuntimePlan
    runtime: Any  # an ascend_lab.runtimes.base.Runtime
    tokenizer: Any
    load_seconds: float
    kv_capacity: int
    max_positions: int | None  # the model's rope table length (None: a local checkpoint's own limit applies)


@contextlib.contextmanager
def open_for_serving(cfg, ctx) -> Iterator[ServedEngine]:
    """Prepare and load the configured runtime; released on exit however the block ends."""
    from ascend_lab.prepare import open_engine

    if cfg.export.graph != "kv_cache":
        raise ConfigError("export.graph", cfg.export.graph, "task=serve generates with the kv_cache graph; "
                                                            "use export.graph=kv_cache")
    if cfg.runtime.name == "acl":  # the .om's batch is static: compile it for the server's rows
        cfg = dataclasses.replace(cfg, benchmark=dataclasses.replace(cfg.benchmark, batch_size=cfg.serve.max_batch))
    ctx.tracker.set_tags({"model": cfg.model.name})
    with open_engine(cfg, ctx) as loaded:
        yield ServedEngine(loaded.plan, loaded.runtime, loaded.tokenizer, loaded.load_seconds,
                           cfg.export.kv_capacity,
                           None if cfg.model.path else cfg.model.max_position_embeddings)
