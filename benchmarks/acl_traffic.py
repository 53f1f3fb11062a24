#!/usr/bin/env python
"""Host↔device traffic per generated token on the pyACL path, at several context lengths.

    python benchmarks/acl_traffic.py                                   # qwen1_5_1_8b_chat shapes, contexts 64 and 512
    python benchmarks/acl_traffic.py --model tiny_qwen --batch 4       # seconds

Exports the model (random weights, ``atc.export_dtype``), compiles the kv_cache graph with ``atc``
(through the caches, as ``task=compile`` does), then generates on the ``.om`` through pyACL at each
context length and reads the bytes copied host→device, device→host and device→device and the pyACL
calls per decode step — from ascend_lab's own counters (``AclRuntime.traffic``) and, where the
stand-ins run, from the simulator's independent memcpy counters. It prints them beside what copying the
cache would cost instead: the whole fixed-capacity cache each step, and a host round trip of the
context's cache (what a design that updates the cache in host memory pays).

On a host without CANN the stand-ins in tests/fakes (the documented-contract ``atc`` and the pyACL
simulator) are used and the script says so; on an Ascend host the real toolkit is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FAKES = REPO / "tests" / "fakes"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="qwen1_5_1_8b_chat", help="model preset (conf/model/)")
    p.add_argument("--contexts", default="64,512", help="prompt lengths, comma-separated")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--launch-dir", type=Path, default=Path.cwd(), help="where outputs/ (caches) live")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def use_stand_ins_unless_cann() -> bool:
    """Put tests/fakes' atc and pyACL simulator in reach when the real toolkit is not importable."""
    try:
        import acl  # noqa: F401

        return False
    except ImportError:
        os.environ["PATH"] = f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}"
        sys.path.insert(0, str(FAKES / "pyacl"))
        return True


def compose(args):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ascend_lab.config import validate
    from ascend_lab.runtimes.registry import register_configs

    register_configs()
    overrides = [f"model={args.model}", "model.weights=random", f"benchmark.batch_size={args.batch}", "tracking=off",
                 "device=cpu"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return validate(hydra_compose(config_name="config", overrides=overrides))


def per_token(runtime, sim, prompt_len: int, batch: int, new_tokens: int, cfg) -> dict:
    import numpy as np

    ids = np.random.default_rng(prompt_len).integers(0, min(1000, runtime.contract.dims.vocab_size), size=(batch, prompt_len))
    engine = runtime.engine(prompt_len + new_tokens, cfg.export.kv_capacity)
    engine.prepare(batch, prompt_len, new_tokens)
    ours0 = runtime.traffic.snapshot()
    engine.prefill(ids, np.ones_like(ids))
    ours1, theirs1 = runtime.traffic.snapshot(), sim.traffic() if sim else None
    for _ in range(new_tokens - 1):
        engine.step()
    ours2, theirs2 = runtime.traffic.snapshot(), sim.traffic() if sim else None
    steps = new_tokens - 1
    row = {"context": prompt_len, "prefill_executions": engine.prefill_executions,
           "prefill_h2d_bytes": ours1["h2d_bytes"] - ours0["h2d_bytes"]}
    for key in ("h2d_bytes", "d2h_bytes", "d2d_bytes", "calls"):
        row[f"{key}_per_token"] = (ours2[key] - ours1[key]) / steps
    if sim:
        for key in ("h2d_bytes", "d2h_bytes", "d2d_bytes"):
            row[f"sim_{key}_per_token"] = (theirs2[key] - theirs1[key]) / steps
        row["sim_api_calls_per_token"] = (theirs2["api_calls"] - theirs1["api_calls"]) / steps
    return row


def main(argv=None) -> int:
    args = parse_args(argv)
    stand_ins = use_stand_ins_unless_cann()
    from ascend_lab.compile import ensure_compiled
    from ascend_lab.context import JobContext
    from ascend_lab.export import ensure_exported
    from ascend_lab.runtimes.acl.runtime import AclRuntime
    from ascend_lab.tracking import Tracker

    cfg = compose(args)
    ctx = JobContext(cfg, Tracker(), args.launch_dir, args.launch_dir)
    exported = ensure_exported(cfg, ctx, dtype=cfg.atc.export_dtype)
    compiled = ensure_compiled(cfg, ctx, exported, required=True)
    contract = exported.contract
    sim = None
    if stand_ins:
        import acl

        sim = acl._sim
    rows = []
    with AclRuntime(compiled.om_path, contract=contract) as runtime:
        for context in (int(c) for c in args.contexts.split(",")):
            rows.append(per_token(runtime, sim, context, args.batch, args.new_tokens, cfg))
    slot = contract.slot_elements(args.batch) * 2  # bytes of one slot (float16 cache)
    capacity = cfg.export.kv_capacity
    print(f"{args.model}: {contract.dims.num_layers} layers × {contract.dims.num_kv_heads} KV heads × "
          f"{contract.dims.head_dim}, batch {args.batch}, cache capacity {capacity} "
          f"({capacity * slot / 2**20:,.0f} MiB), {'stand-ins (atc, pyACL simulator)' if stand_ins else 'CANN'}")
    header = ("context", "H2D B/token", "D2H B/token", "D2D B/token", "acl calls/token", "prefill runs",
              "whole cache H2D B/step", "host round trip B/step")
    print(" | ".join(header))
    for row in rows:
        round_trip = 2 * row["context"] * slot
        print(" | ".join(str(v) for v in (row["context"], row["h2d_bytes_per_token"], row["d2h_bytes_per_token"],
                                          row["d2d_bytes_per_token"], f"{row['calls_per_token']:.1f}",
                                          row["prefill_executions"], f"{capacity * slot:,}", f"{round_trip:,}")))
        row["whole_cache_bytes_per_step"] = capacity * slot
        row["host_round_trip_bytes_per_step"] = round_trip
        if sim:
            assert row["sim_h2d_bytes_per_token"] == row["h2d_bytes_per_token"], row
            assert row["sim_d2h_bytes_per_token"] == row["d2h_bytes_per_token"], row
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "batch": args.batch, "stand_ins": stand_ins,
                                         "slot_bytes": slot, "capacity": capacity, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
