"""Generation on the .om through pyACL (the simulator in tests/fakes, the fake atc compiling the real
kv_cache graph of tiny_qwen): the same greedy tokens as onnxruntime and torch at batch 1, 4 and 8 with
left padding and at a long context; the cache stays on the device (host↔device traffic per token flat
from context 64 to 480, counted by the runtime and, independently, by the simulator); old CANN's
numpy_to_ptr surface; every resource released, also when a step fails."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from ascend_lab.bench.generation import greedy_generate
from ascend_lab.config import AppConfig
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.device import HostTimer
from conftest import SMALL_BANDWIDTH, load_torch_runtime, restart_simulated_process, stand_in_env

from conftest import FAKES  # noqa: E402
CAPACITY = 1024


@pytest.fixture(scope="module")
def launch_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("acl_gen")


def context(launch_dir, cfg):
    from ascend_lab.context import JobContext
    from ascend_lab.tracking import Tracker

    return JobContext(cfg, Tracker(), launch_dir, launch_dir)


@pytest.fixture(scope="module")
def compiled(launch_dir):
    """tiny_qwen's kv_cache graph in float16, compiled by the fake atc for batch 1, 4 and 8."""
    from ascend_lab.compile import ensure_compiled
    from ascend_lab.export import ensure_exported

    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", f"{FAKES / 'bin'}:{__import__('os').environ['PATH']}")
    out = {}
    for batch in (1, 4, 8):
        cfg = AppConfig(benchmark=BenchmarkConfig(batch_size=batch))
        ctx = context(launch_dir, cfg)
        exported = ensure_exported(cfg, ctx, dtype=cfg.atc.export_dtype)
        out[batch] = (exported, ensure_compiled(cfg, ctx, exported, required=True))
    mp.undo()
    return out



def prompts(seed: int, batch: int, length: int, pads=()):
    ids = np.random.default_rng(seed).integers(0, 300, size=(batch, length))
    mask = np.ones_like(ids)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    return ids, mask


def generate(runtime, ids, mask, new_tokens):
    engine = runtime.engine(ids.shape[1] + new_tokens, CAPACITY)
    engine.prepare(ids.shape[0], ids.shape[1], new_tokens)
    return engine, greedy_generate(engine, ids, mask, new_tokens, HostTimer)


PADS = {1: (), 4: (0, 3, 6, 1), 8: (2, 0, 0, 5, 1, 0, 7, 3)}


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_acl_onnxruntime_and_torch_pick_the_same_tokens(sim, compiled, batch):
    from ascend_lab.runtimes.acl.runtime import AclRuntime
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    exported, om = compiled[batch]
    assert om.dims_gears == [[1, 1], [16, 16], [128, 128]] and exported.dtype == "float16"
    ids, mask = prompts(batch, batch, 9, PADS[batch])
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        assert runtime.dynamic_mode == "dynamic_dims"
        engine, on_npu = generate(runtime, ids, mask, 24)
        assert engine.backend.fixed_capacity == CAPACITY and engine.prefill_executions == 1
    with OnnxRuntime(exported.onnx_path, exported.contract) as ort_runtime:
        _, on_ort = generate(ort_runtime, ids, mask, 24)
    cfg = AppConfig(model=ModelConfig(dtype="float16"))
    with load_torch_runtime(cfg) as torch_runtime:
        _, on_torch = generate(torch_runtime, ids, mask, 24)
    np.testing.assert_array_equal(on_npu.tokens, on_ort.tokens)
    np.testing.assert_array_equal(on_npu.tokens, on_torch.tokens)
    assert len(np.unique(on_npu.tokens)) > 1
    assert sim._sim.leaks() == []


def test_a_context_above_256_in_a_few_executions(sim, compiled):
    from ascend_lab.runtimes.acl.runtime import AclRuntime
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    exported, om = compiled[4]
    ids, mask = prompts(3, 4, 300, (0, 40, 7, 100))
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        engine, on_npu = generate(runtime, ids, mask, 12)
        assert engine.prefill_executions == 3  # padded to 384 = 3 × 128 (gc.plan_prefill's cost model)
    with OnnxRuntime(exported.onnx_path, exported.contract) as ort_runtime:
        _, on_ort = generate(ort_runtime, ids, mask, 12)
    np.testing.assert_array_equal(on_npu.tokens, on_ort.tokens)


def traffic_per_token(sim, runtime, prompt_len: int, new_tokens: int = 8) -> dict:
    """(the runtime's own counters, the simulator's) per decode step of one generation."""
    ids, mask = prompts(prompt_len, 1, prompt_len)
    engine = runtime.engine(prompt_len + new_tokens, CAPACITY)
    engine.prepare(1, prompt_len, new_tokens)
    engine.prefill(ids, mask)
    runtime.last_engine = engine
    ours, theirs = runtime.traffic.snapshot(), sim._sim.traffic()
    for _ in range(new_tokens - 1):
        engine.step()
    ours_end, theirs_end = runtime.traffic.snapshot(), sim._sim.traffic()
    steps = new_tokens - 1
    return {"h2d": (ours_end["h2d_bytes"] - ours["h2d_bytes"]) / steps,
            "d2h": (ours_end["d2h_bytes"] - ours["d2h_bytes"]) / steps,
            "d2d": (ours_end["d2d_bytes"] - ours["d2d_bytes"]) / steps,
            "calls": (ours_end["calls"] - ours["calls"]) / steps,
            "sim_h2d": (theirs_end["h2d_bytes"] - theirs["h2d_bytes"]) / steps,
            "sim_d2h": (theirs_end["d2h_bytes"] - theirs["d2h_bytes"]) / steps,
            "sim_d2d": (theirs_end["d2d_bytes"] - theirs["d2d_bytes"]) / steps,
            "sim_copies": sum(theirs_end[f"{k}_calls"] - theirs[f"{k}_calls"] for k in ("h2d", "d2h", "d2d")) / steps,
            "sim_api_calls": (theirs_end["api_calls"] - theirs["api_calls"]) / steps}


def test_traffic_per_token_does_not_grow_with_the_context(sim, compiled):
    """The cache stays in device memory: per token the host sends the token, its position and the slot
    count, and gets one token id back, at context 64 as at 496 (padded to 4 × 128 prefill executions) — a
    few dozen bytes, where copying the cache each step would cost capacity × slot bytes."""
    from ascend_lab.runtimes.acl.runtime import AclRuntime

    exported, om = compiled[1]
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        short = traffic_per_token(sim, runtime, 64)
        long = traffic_per_token(sim, runtime, 496)
        assert runtime.last_engine.prefill_executions == 4
    assert short == long
    assert short["h2d"] == short["sim_h2d"] == 8 + 8 + 8  # token, position, past_length (int64)
    assert short["d2h"] == short["sim_d2h"] == 8  # the next token id
    slot_bytes = exported.contract.slot_elements(1) * 2  # float16
    assert short["d2d"] == short["sim_d2d"] == slot_bytes  # the new token's slot, device to device
    assert short["sim_copies"] == 5  # 3 H2D, 1 D2D, 1 D2H
    whole_cache = CAPACITY * slot_bytes
    assert short["h2d"] < whole_cache / 1000


def test_old_cann_without_bytes_to_ptr_generates_the_same(sim, compiled, monkeypatch):
    """CANN before 6.0.1 has only numpy_to_ptr/ptr_to_numpy (Ascend/samples acllite falls back the same way)."""
    from ascend_lab.runtimes.acl.runtime import AclRuntime

    exported, om = compiled[4]
    ids, mask = prompts(4, 4, 9, PADS[4])
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        _, modern = generate(runtime, ids, mask, 12)
    restart_simulated_process(sim, cann_version="5.0.4")  # the same host with an old CANN
    assert not hasattr(sim.util, "bytes_to_ptr") and hasattr(sim.util, "numpy_to_ptr")
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        assert not runtime._host.modern
        _, old = generate(runtime, ids, mask, 12)
    np.testing.assert_array_equal(old.tokens, modern.tokens)
    assert sim._sim.leaks() == []


def test_output_names_are_matched_by_name_else_in_contract_order(sim, compiled, tmp_path, monkeypatch):
    """op_name:edge_index:name (any op name, fused PartitionedCall_... included) → matched by name; --out_nodes'
    op_name:edge_index → the contract's order where the count fits; else an error naming --out_nodes."""
    import dataclasses
    import subprocess

    from ascend_lab.errors import ToolchainError
    from ascend_lab.runtimes.acl.runtime import AclRuntime
    from ascend_lab.runtimes.acl.pyacl import graph_output_names

    assert graph_output_names(["/ArgMax:0:next_token", "logits"], None, "m") == ["next_token", "logits"]
    exported, om = compiled[1]
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        raw = [sim.mdl.get_output_name_by_index(runtime._desc, i) for i in range(3)]
        assert all(name.count(":") == 2 for name in raw), raw  # what pyACL reports for an ONNX-built model
        assert [s.name for s in runtime.outputs] == ["logits", "next_token", "present_key_values"]

    argv = [a for a in om.argv if not a.startswith("--output=")]

    def recompile(name: str, *extra: str, **env: str) -> Path:
        out = tmp_path / name
        subprocess.run([sys.executable, str(FAKES / "bin" / "atc"), *argv[1:], f"--output={out}", *extra],
                       check=True, capture_output=True, env={**__import__("os").environ, **env})
        return next(tmp_path.glob(f"{name}*.om"))

    ids, mask = prompts(1, 1, 9)
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        _, want = generate(runtime, ids, mask, 6)
    fused = recompile("fused", FAKE_ATC_FUSED_OUTPUTS="1")
    out_nodes = recompile("outnodes", "--out_nodes=/ArgMax:0")
    for path in (fused, out_nodes):
        with AclRuntime(path, contract=exported.contract) as runtime:
            raw = sim.mdl.get_output_name_by_index(runtime._desc, 0)
            assert raw.startswith("PartitionedCall_") if path == fused else raw.count(":") == 1, raw
            assert [s.name for s in runtime.outputs] == ["logits", "next_token", "present_key_values"]
            _, got = generate(runtime, ids, mask, 6)
        np.testing.assert_array_equal(got.tokens, want.tokens)
    wider = dataclasses.replace(exported.contract, layer_outputs=True)  # four outputs expected, three there
    with pytest.raises(ToolchainError, match=r"carry no name .*--out_nodes.*atc\.extra_args"):
        AclRuntime(out_nodes, contract=wider)
    assert sim._sim.leaks() == []


def test_a_failing_step_releases_everything(sim, compiled):
    from ascend_lab.runtimes.acl.runtime import AclError, AclRuntime

    exported, om = compiled[4]
    ids, mask = prompts(5, 4, 9)
    runtime = AclRuntime(om.om_path, contract=exported.contract)
    with runtime:
        engine = runtime.engine(30, CAPACITY)
        engine.prepare(4, 9, 20)
        engine.prefill(ids, mask)
        sim._sim.fail_next("rt.memcpy", 507899)
        with pytest.raises(AclError, match="memcpy"):
            engine.step()
    assert sim._sim.leaks() == []


def test_a_batch_the_om_was_not_compiled_for_is_a_clear_error(sim, compiled):
    from ascend_lab.errors import ConfigError
    from ascend_lab.runtimes.acl.runtime import AclRuntime

    exported, om = compiled[4]
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        engine = runtime.engine(30, CAPACITY)
        with pytest.raises(ConfigError, match=r"compiled for batch 4.*benchmark.batch_size=2"):
            engine.prepare(2, 9, 20)
    assert sim._sim.leaks() == []


# ------------------------------------------------------------------------------------------------
# The real CLI through the stand-ins (atc on PATH, the simulator importable as acl)


@pytest.mark.slow
def test_cli_infer_on_acl_prints_onnxruntimes_text(run_cli, tmp_path, export_cache):
    """task=infer runtime=acl generates through the compiled .om; its text is onnxruntime's on the same
    (float16) graph, and here also the float32 one's."""
    import json

    def generated(*overrides, env=None):
        proc = run_cli("task=infer", "tracking=off", export_cache, *overrides, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [line for line in proc.stdout.splitlines() if line.startswith("generated: ")][0]

    on_npu = generated("runtime=acl", env=stand_in_env(tmp_path / "leaks.json"))
    # The default launcher runs the three jobs in one process: one acl.init for all, one finalize at exit.
    assert not (tmp_path / "torch_npu_imported").exists()
    report = json.loads((tmp_path / "leaks.json").read_text())
    assert (report["leaks"], report["inits"], report["finalizes"]) == ([], 1, 1)
    assert on_npu == generated("runtime=onnxruntime", "model.dtype=float16")
    assert on_npu == generated("runtime=onnxruntime")


@pytest.mark.slow
def test_cli_acl_sweep_gives_the_walkthrough_table_with_traffic(run_cli, mlflow_runs, tmp_path, export_cache):
    import json

    # torch_npu "installed" (a stand-in that only records its import): runtime=acl must never import it.
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "torch_npu.py").write_text(f"open({str(tmp_path / 'torch_npu_imported')!r}, 'w').close()\n")
    env = stand_in_env(tmp_path / "leaks.json")
    env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{stub}"
    proc = run_cli("-m", "task=bench", "runtime=acl", "benchmark.scenario=generate", "benchmark.batch_size=1,4,8",
                   "benchmark.warmup=1", "benchmark.iterations=2", "benchmark.min_duration_s=0", SMALL_BANDWIDTH,
                   export_cache, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, runs = mlflow_runs(tmp_path)
    children = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    assert sorted(int(r.data.tags["batch_size"]) for r in children) == [1, 4, 8]
    for run in children:
        m, batch = run.data.metrics, int(run.data.tags["batch_size"])
        assert run.data.tags["runtime"] == "acl" and m["prefill_executions"] == 1
        assert run.data.tags["device"] == "npu:0" and "pyACL device-to-device" in run.data.tags["roofline.bandwidth"]
        assert m["h2d_bytes_per_token"] == 8 * (2 * batch + 1)  # tokens, positions, the slot count
        assert m["d2h_bytes_per_token"] == 8 * batch  # the next token ids
        assert m["ttft_ms_mean"] > 0 and m["decode_tokens_s"] > 0
    for header in ("TTFT (ms)", "TPOT (ms)", "decode (tokens/s)", "H2D bytes/token"):
        assert header in proc.stdout, header
    assert json.loads((tmp_path / "leaks.json").read_text())["leaks"] == []


# ------------------------------------------------------------------------------------------------
# Precision: what ATC's default force_fp16 does to a finfo(float32).min mask, and to the shipped graph


def compile_with_fake_atc(onnx_path: Path, out_dir: Path, input_shape: str, precision: str, *extra) -> Path:
    """Run the stand-in atc on ``onnx_path`` (as task=compile would) and return the .om it wrote."""
    import subprocess

    from ascend_lab.compile.runner import find_om

    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(FAKES / "bin" / "atc"), "--framework=5", f"--model={onnx_path}",
            f"--output={out_dir / 'model'}", "--soc_version=Ascend910B3", "--input_format=ND",
            f"--input_shape={input_shape}", f"--precision_mode={precision}", *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return find_om(out_dir / "model")


@pytest.fixture(scope="module")
def float32_min_mask_graph(tmp_path_factory) -> Path:
    """Attention whose additive mask is filled with finfo(float32).min (what transformers builds, and what
    ascend_lab's logits graph used to), exported in float32; row 1 is all padding."""
    import torch

    class MaskedAttention(torch.nn.Module):
        def forward(self, scores, attention_mask):
            blocked = torch.zeros_like(scores).masked_fill(attention_mask[:, None, :] == 0,
                                                           torch.finfo(torch.float32).min)
            return torch.softmax(scores + blocked, dim=-1)

    path = tmp_path_factory.mktemp("mask") / "mask.onnx"
    torch.onnx.export(MaskedAttention(), (torch.zeros(2, 4, 4), torch.ones(2, 4, dtype=torch.int64)), str(path),
                      input_names=["scores", "attention_mask"], output_names=["probs"], opset_version=17, dynamo=False)
    return path


def test_force_fp16_turns_a_float32_min_mask_into_nan(sim, float32_min_mask_graph, tmp_path):
    from ascend_lab.runtimes.acl.runtime import AclRuntime

    scores = np.random.default_rng(0).standard_normal((2, 4, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.int64)  # row 1: only padding
    shape = "scores:2,4,4;attention_mask:2,4"
    results = {}
    for precision in ("force_fp16", "must_keep_origin_dtype"):
        om = compile_with_fake_atc(float32_min_mask_graph, tmp_path / precision, shape, precision)
        with AclRuntime(om) as runtime:
            results[precision] = runtime.run({"scores": scores, "attention_mask": mask})["probs"]
    assert np.isnan(results["force_fp16"][1]).all()  # finfo(float32).min → -inf in float16 → NaN
    assert np.isfinite(results["must_keep_origin_dtype"]).all()


@pytest.mark.parametrize("precision", ["must_keep_origin_dtype", "force_fp16"])
def test_the_shipped_graph_stays_finite_with_padding_in_either_precision(sim, compiled, tmp_path, precision):
    """ascend_lab's kv_cache graph masks with a float16-safe value (and exports in float16): a row that is
    almost all padding, and the padding slots themselves, stay finite whatever the precision mode."""
    from ascend_lab import graph_contract as gc
    from ascend_lab.runtimes.acl.runtime import AclRuntime

    exported, om = compiled[4]
    if precision != "must_keep_origin_dtype":
        shape = om.input_shape
        om_path = compile_with_fake_atc(exported.onnx_path, tmp_path / precision, shape, precision,
                                        "--dynamic_dims=1,1;16,16;128,128")
    else:
        om_path = om.om_path
    ids, mask = prompts(6, 4, 16, (15, 0, 8, 3))  # row 0: one real token after 15 pads
    pads = gc.left_pad_lengths(mask)
    with AclRuntime(om_path, contract=exported.contract) as runtime:
        out = runtime.run({"input_ids": ids, "position_ids": gc.positions(0, 16, pads),
                           "past_length": np.array([0]), "pad_lengths": pads,
                           "past_key_values": np.zeros(exported.contract.cache_shape(CAPACITY, 4), np.float16)})
    assert np.isfinite(out["logits"]).all() and np.isfinite(out["present_key_values"]).all()
    assert sim._sim.leaks() == []


def test_rank4_cache_layout_compiles_to_rank4_inputs_and_picks_the_same_tokens(sim, compiled, launch_dir,
                                                                              monkeypatch):
    """export.cache_layout=rank4 ([capacity, b, 2·layers, kv_heads·head_dim], for CANN whose --dynamic_dims
    takes rank <= 4): the .om's cache input has rank 4 and the tokens are the rank-5 graph's; auto picks rank4
    on CANN 7.0 / 8.0.RC1-RC2 only (ascend_lab.export.cache_layout)."""
    from ascend_lab.compile import ensure_compiled
    from ascend_lab.config.export import ExportConfig
    from ascend_lab.export import cache_layout, ensure_exported
    from ascend_lab.runtimes.acl.runtime import AclRuntime

    assert cache_layout.resolve("auto", "8.0.RC2")[0] == "rank4" and cache_layout.resolve("auto", "7.0.0")[0] == "rank4"
    assert cache_layout.resolve("auto", "8.0.RC3")[0] == "rank5" and cache_layout.resolve("auto", None)[0] == "rank5"
    monkeypatch.setenv("PATH", f"{FAKES / 'bin'}:{__import__('os').environ['PATH']}")
    cfg = AppConfig(benchmark=BenchmarkConfig(batch_size=1), export=ExportConfig(cache_layout="rank4"))
    ctx = context(launch_dir, cfg)
    exported = ensure_exported(cfg, ctx, dtype=cfg.atc.export_dtype)
    om = ensure_compiled(cfg, ctx, exported, required=True)
    dims = exported.contract.dims
    assert exported.cache_layout == "rank4"
    assert om.input_shape.endswith(f"past_key_values:1024,1,{2 * dims.num_layers},{dims.num_kv_heads * dims.head_dim}")
    ids, mask = prompts(5, 1, 20)
    with AclRuntime(om.om_path, contract=exported.contract) as runtime:
        _, rank4 = generate(runtime, ids, mask, 10)
    plain_exported, plain_om = compiled[1]
    with AclRuntime(plain_om.om_path, contract=plain_exported.contract) as runtime:
        _, rank5 = generate(runtime, ids, mask, 10)
    np.testing.assert_array_equal(rank4.tokens, rank5.tokens)
