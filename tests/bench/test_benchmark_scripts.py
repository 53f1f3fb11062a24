"""The benchmark scripts and the roofline they share with task=bench.

- :mod:`ascend_lab.bench.roofline`: the bytes-per-step rule on a hand-built graph, the roofline arithmetic,
  a bandwidth measurement on a small array, and that it imports nothing heavy.
- ``benchmarks/decode_vs_hf.py``: its ratio arithmetic; a ``--tiny`` smoke run where every row runs, each CLI
  row's figures are its ``task=bench`` job's metrics (roofline included) and the ratios and agreement come out;
  the runner-overhead part.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ascend_lab.bench import roofline

from conftest import REPO, SMALL_BANDWIDTH  # noqa: E402
SCRIPT = REPO / "benchmarks" / "decode_vs_hf.py"


def load_script():
    """benchmarks/decode_vs_hf.py as a module (it is a script, not a package member)."""
    name = "decode_vs_hf_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# roofline.py


def _tiny_graph(path: Path, external: bool) -> dict[str, int]:
    """A graph with one initializer of each kind the rule tells apart; returns their byte sizes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {
        "w": rng.standard_normal((4, 8)).astype(np.float32),  # MatMul weight: read in full
        "embed": rng.standard_normal((10, 4)).astype(np.float32),  # only Gather's table: one row per token
        "tied": rng.standard_normal((10, 4)).astype(np.float32),  # Gather table and (transposed) LM head
        "q8": rng.integers(-128, 127, (8, 8)).astype(np.int8),  # int8 weight: read in full
        "idx": np.array([1, 3], dtype=np.int64),  # Gather's indices, not its table: read in full
        "unused": np.zeros((100, 100), dtype=np.float32),  # no node reads it
    }
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["e"]),
        helper.make_node("Gather", ["tied", "ids"], ["t"]),
        helper.make_node("Add", ["e", "t"], ["h"]),  # [n, 4]
        helper.make_node("MatMul", ["h", "w"], ["h8"]),  # [n, 8]
        helper.make_node("Cast", ["q8"], ["q8f"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["h8", "q8f"], ["h8b"]),
        helper.make_node("Gather", ["h8b", "idx"], ["picked"], axis=1),  # [n, 2]
        helper.make_node("Transpose", ["tied"], ["tied_t"]),
        helper.make_node("MatMul", ["h", "tied_t"], ["logits"]),  # [n, 10]
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10]),
         helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["n", 2])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return {k: v.nbytes for k, v in inits.items()}


@pytest.mark.parametrize("external", [False, True])
def test_step_weight_bytes_counts_what_a_step_reads_in_full(tmp_path, external):
    path = tmp_path / "model.onnx"
    sizes = _tiny_graph(path, external)
    expected = sizes["w"] + sizes["tied"] + sizes["q8"] + sizes["idx"]
    assert expected == 4 * 8 * 4 + 10 * 4 * 4 + 8 * 8 + 2 * 8
    assert roofline.step_weight_bytes(path) == expected
    if external:  # the sizes come from the graph, the external data is never read
        (tmp_path / "model.onnx.data").write_bytes(b"")
        assert roofline.step_weight_bytes(path) == expected


def test_weight_bytes_rule():
    sizes = {"w": 100, "table": 1000, "tied": 1000, "unused": 5, "indices": 16}
    uses = {"w": {("MatMul", 1)}, "table": {("Gather", 0)}, "tied": {("Gather", 0), ("Transpose", 0)},
            "indices": {("Gather", 1)}}
    assert roofline.weight_bytes_per_step(sizes, uses) == 100 + 1000 + 16
    assert roofline.weight_bytes_per_step({}, {}) == 0


def test_roofline_arithmetic():
    # The quiet-machine figures of benchmarks/README.md: 32.5 GB/s over 1.976 GB per step.
    assert roofline.roofline_tokens_s(1, 32.5, 1_976_000_000) == pytest.approx(16.447, rel=1e-4)
    assert roofline.roofline_tokens_s(8, 32.5, 1_976_000_000) == pytest.approx(8 * 16.447, rel=1e-4)
    with pytest.raises(ValueError):
        roofline.roofline_tokens_s(1, 32.5, 0)
    # Qwen2.5-0.5B's cache: 24 layers, 2 KV heads of 64, float32: a position's keys and values at batch 1.
    from ascend_lab.graph_contract import GraphContract, ModelDims

    contract = GraphContract("kv_cache", ModelDims(24, 14, 2, 64, 896, 151936), "float32")
    position = roofline.cache_position_bytes(contract, 1)
    assert position == 2 * 24 * 2 * 64 * 4 and roofline.cache_position_bytes(contract, 8) == 8 * position
    # Prompt 32, 64 new tokens: the 63 decode steps attend to 33 … 95 positions, 64 on average.
    assert roofline.decode_step_bytes(1_976_000_000, position, 32, 64) == 1_976_000_000 + 64 * position
    with pytest.raises(ValueError):
        roofline.decode_step_bytes(1, position, 32, 1)  # no decode step


def test_bandwidth_of_a_small_array_is_a_positive_figure():
    bw = roofline.measure_read_bandwidth(gb=0.004, repeats=2, threads=2)
    assert bw.gb_s > 0 and bw.copy_rw_gb_s > 0 and bw.counts == "read" and bw.metric == "roofline_read_gb_s"
    assert set(bw.by_kernel) == {"sum_1t", "sum_2t", "max_1t", "max_2t", "gemv_blas"}
    assert bw.gb_s == max(bw.by_kernel.values())
    assert bw.array_gb == pytest.approx(0.004, rel=1e-6) and bw.threads == 2 and bw.repeats == 2
    assert not bw.fits_roofline  # a few MB measure the caches, not memory
    flat = bw.as_dict()
    assert flat["read_gb_s"] == bw.gb_s and flat["read_gb_s_max_2t"] == bw.by_kernel["max_2t"]
    assert "GB/s" in bw.describe()
    with pytest.raises(ValueError):
        roofline.measure_read_bandwidth(gb=0)


def test_roofline_imports_nothing_heavy():
    code = ("import sys, ascend_lab.bench.roofline; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'transformers', 'mlflow', 'hydra', 'psutil') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------
# decode_vs_hf.py: arithmetic


def test_script_ratios_and_targets():
    script = load_script()

    def fig(row, batch, tok_s, roofline_tokens_s=16.447, round_index=0):
        return script.Figure(row, batch, ttft_ms=1.0, tpot_ms=1.0, decode_tokens_s=tok_s,
                             roofline_tokens_s=roofline_tokens_s, gb_s=32.5, step_bytes=1.976e9, reps=3,
                             round_index=round_index)

    figures = [fig("hf", 1, 11.5), fig("hf", 8, 50.0, None), fig("ort", 1, 15.0), fig("ort", 8, 80.0),
               fig("ort_int8", 1, 33.0)]
    agree = {"ort_int8": {"tf_top1_agreement_mean": 0.5}, "ort": {"tf_top1_agreement_mean": 1.0}}
    ratios = script.compute_ratios(figures, agree)
    assert list(ratios)[:4] == ["ort_roofline_fraction", "ort_vs_hf", "hf_roofline_fraction", "ort_b8_vs_b1"]
    assert ratios["ort_roofline_fraction"] == pytest.approx(15.0 / 16.447)
    assert ratios["hf_roofline_fraction"] == pytest.approx(11.5 / 16.447)
    assert ratios["ort_vs_hf"] == pytest.approx(15.0 / 11.5)
    assert ratios["ort_b8_vs_b1"] == pytest.approx(80.0 / 15.0)
    assert ratios["b8_vs_b1.hf"] == pytest.approx(50.0 / 11.5)
    assert ratios["int8_vs_hf"] == pytest.approx(33.0 / 11.5)
    assert ratios["int8_agreement"] == 0.5
    assert script.TARGETS["ort_roofline_fraction"] == ("≥", 0.90)
    assert script.target_for("int8_vs_hf") == ("≥", 3.0)
    assert script.target_for("ort_vs_hf") is None  # reported, no target (HF is near the roofline itself)
    assert script.meets(0.91, ("≥", 0.9)) and not script.meets(0.89, ("≥", 0.9))
    assert script.meets(1.0, ("≤", 1.15)) and not script.meets(2.0, ("<", 2.0))

    # Rounds: each figure is judged against its own job's roofline, and the median round is the one that counts
    # (fractions 0.80, 0.92 and 0.97 → the round at 14 tok/s), for every ratio.
    rounds = [fig("ort", 1, 13.0, 16.25), fig("ort", 1, 14.0, 15.2, round_index=1),
              fig("ort", 1, 16.0, 16.5, round_index=2), fig("ort", 8, 80.0)]
    ratios = script.compute_ratios(rounds)
    assert ratios["ort_roofline_fraction"] == pytest.approx(14.0 / 15.2)
    assert ratios["ort_b8_vs_b1"] == pytest.approx(80.0 / 14.0)
    assert script.representatives(rounds)[("ort", 1)].round_index == 1
    # A job's figures are its task=bench metrics, the roofline's included.
    metrics = {"ttft_ms_p50": 2.0, "tpot_ms_p50": 3.0, "decode_tokens_s": 9.0, "iterations": 3.0,
               "roofline_tokens_s": 18.0, "roofline_copy_gb_s": 30.0, "roofline_step_bytes": 5.0}
    figure = script.Figure.of("ort", 1, metrics)
    assert figure.roofline_fraction() == 0.5 and figure.gb_s == 30.0 and figure.step_bytes == 5.0


def test_script_ort_row_is_the_issue_command(tmp_path):
    script = load_script()
    args = script.parse_args(["--launch-dir", str(tmp_path), "--batches", "8"])
    words = script.bench_overrides(args, "ort", 8, job=3)
    for word in ("task=bench", "model=qwen2_5_0_5b_instruct", "model.weights=random", "runtime=onnxruntime",
                 "benchmark.scenario=generate", "benchmark.batch_size=8"):
        assert word in words
    # Every job measures its own bandwidth: a folder of its own.
    assert f"telemetry.bandwidth_cache_dir={args.bandwidth_dir / 'job3'}" in words
    assert "export.quantize=int8" in script.bench_overrides(args, "ort_int8", 1)
    with pytest.raises(SystemExit):
        script.parse_args(["--bandwidth-gb", "0.5"])  # a roofline needs an array larger than the caches
    # A smoke run checks that the figures come out, not what they are: any array size, but a size.
    assert script.parse_args(["--launch-dir", str(tmp_path), "--tiny", "--bandwidth-gb", "0.02"]).bandwidth_gb == 0.02
    with pytest.raises(SystemExit):
        script.parse_args(["--tiny", "--bandwidth-gb", "0"])
    with pytest.raises(SystemExit):
        script.parse_args(["--rows", "ort_feeds"])  # the numpy-feeds row is gone
    quick = script.parse_args(["--launch-dir", str(tmp_path), "--quick"])
    assert (quick.batches, quick.reps, quick.rounds, quick.skip_overhead) == ([1], 1, 1, True)


# ------------------------------------------------------------------------------------------------
# decode_vs_hf.py: end to end on tiny_qwen


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> Path:
    """The launch folder (export cache, MLflow store) of the end-to-end run here."""
    return tmp_path_factory.mktemp("decode_vs_hf")


def _run_script(launch: Path, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The script's smoke run (--tiny), its jobs measuring the bandwidth over a small array (SMALL_BANDWIDTH's)."""
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--no-track", "--launch-dir", str(launch),
                           "--bandwidth-gb", SMALL_BANDWIDTH.partition("=")[2], *argv],
                          capture_output=True, text=True, timeout=timeout, check=False, cwd=launch)


@pytest.mark.slow
def test_decode_vs_hf_smoke(launch, export_cache):
    """--tiny: every row runs, each CLI row's figures are its task=bench job's metrics (roofline included), the
    ratios and agreement come out, and the runner-overhead part times the -m sweep, the plain loop and --help
    (one script run for both: each run pays the script's start, the export and its own bandwidth passes; one
    timed pass per bandwidth kernel over a small array, and the exports in this worker's cache)."""
    out = launch / "smoke.json"
    done = _run_script(launch, "--overrides", "model=tiny_qwen", "telemetry.bandwidth_repeats=1", export_cache,
                       "--reps", "1", "--batches", "1,8", "--agreement-tokens", "6", "--rounds", "2",
                       "--overhead-new-tokens", "2", "--overhead-iterations", "1", "--json", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    rows = {(f["row"], f["batch"]) for f in results["figures"]}
    assert rows == {(r, b) for r in ("hf", "ort", "torch", "ort_plain", "ort_int8") for b in (1, 8)}
    # The headline job ran twice (--rounds 2).
    assert sum((f["row"], f["batch"]) == ("ort", 1) for f in results["figures"]) == 2
    assert all(f["decode_tokens_s"] > 0 and f["step_bytes"] > 0 and f["tpot_ms"] > 0 and f["gb_s"] > 0
               for f in results["figures"])
    ratios = results["ratios"]
    for key in ("ort_roofline_fraction", "ort_vs_hf", "hf_roofline_fraction", "ort_b8_vs_b1", "int8_vs_hf",
                "int8_agreement"):
        assert key in ratios and ratios[key] > 0, key
    # The CLI rows are task=bench jobs: their figures are those jobs' metrics, the roofline's included.
    ort_runs = results["cli_runs"]["ort"]
    assert [r["batch"] for r in ort_runs] == [1, 1, 8]
    ort_figures = [f for f in results["figures"] if f["row"] == "ort"]
    for run, figure in zip(ort_runs, ort_figures, strict=True):
        assert run["command"].startswith("python -m ascend_lab.run task=bench ")
        assert run["tags"]["runtime"] == "onnxruntime" and run["tags"]["engine"] == "CacheEngine"
        assert run["tags"]["onnx_sha256"] == results["onnx_sha256"]
        assert figure["decode_tokens_s"] == run["metrics"]["decode_tokens_s"]
        assert figure["roofline_tokens_s"] == run["metrics"]["roofline_tokens_s"]
        # The weights and the KV cache: more than the weights alone.
        assert run["metrics"]["roofline_step_bytes"] > run["metrics"]["roofline_weight_bytes"]
        # The CLI's default: the transformer-optimised graph, derived from the export.
        assert run["tags"]["onnx_optimized_path"].endswith("~ortopt/model.onnx")
    # Each job measured its own bandwidth (a folder of its own).
    assert len({r["tags"]["roofline.bandwidth"].rsplit(": ", 1)[1] for r in ort_runs}) == 3
    # ort_plain is the same job with runtime.transformer_optimize=false: the export as it is.
    for run in results["cli_runs"]["ort_plain"]:
        assert "runtime.transformer_optimize=false" in run["command"].split()
        assert run["tags"]["onnx_sha256"] == results["onnx_sha256"] and "onnx_optimized_path" not in run["tags"]
    assert results["cli_runs"]["torch"][0]["tags"]["runtime"] == "torch"
    assert "export.quantize=int8" in results["cli_runs"]["ort_int8"][0]["command"].split()
    agree = results["agreement"]
    assert set(agree) == {"ort", "ort_plain", "ort_int8"}
    assert all(0 <= v["tf_top1_agreement_mean"] <= 1 for v in agree.values())
    # The exported graph on onnxruntime decodes the PyTorch model's greedy tokens exactly.
    assert agree["ort"]["tf_top1_agreement_mean"] == agree["ort_plain"]["tf_top1_agreement_mean"] == 1.0
    for text in ("% roofline", "ort_roofline_fraction", "ort row = python -m ascend_lab.run", "agreement"):
        assert text in done.stdout, text
    overhead = results["overhead"]
    assert overhead["sweep_seconds"] > 0 and len(overhead["plain_loop_runs"]) == 2
    assert overhead["help_seconds"] > 0 and "task=bench" in overhead["sweep_command"]
    assert results["ratios"]["runner_overhead"] == overhead["runner_overhead"]
    # The sweep reads the bandwidth the first job measured (the plain loop measures none).
    first_reading = Path(ort_runs[0]["tags"]["roofline.bandwidth"].rsplit(": ", 1)[1].rstrip(")"))
    assert f"telemetry.bandwidth_cache_dir={first_reading.parent}" in overhead["sweep_command"].split()
    assert "runner overhead" in done.stdout


# ------------------------------------------------------------------------------------------------
# vs_genai.py: onnxruntime-genai side by side (onnxruntime-genai is in the test extra)

VS_GENAI = REPO / "benchmarks" / "vs_genai.py"


@pytest.mark.slow
def test_vs_genai_smoke(tmp_path):
    """--smoke on tiny_qwen: the peer's fp32 and int4 models are built from our folder, both sides run each row in
    their own process at 2 threads, and the figures, ratios, agreement and load averages come out."""
    out = tmp_path / "vs_genai.json"
    done = subprocess.run([sys.executable, str(VS_GENAI), "--smoke", "--launch-dir", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    folder = tmp_path / "outputs" / "vs_genai" / "tiny_qwen-seed0"
    assert (folder / "hf" / "config.json").is_file()
    for precision in ("fp32", "int4"):
        config = json.loads((folder / f"genai-{precision}" / "genai_config.json").read_text())
        assert config["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 2
    assert set(results["results"]) == {"fp32.b1", "int4.b1", "fp32.b2", "int4.b2"}
    for row in results["results"].values():
        for side in ("ours", "peer"):
            (figures,) = row[side]
            assert figures["threads"] == 2 and figures["decode_tokens_s"] > 0 and figures["ttft_ms"] > 0
            assert figures["peak_rss_mb"] > 0
    # Our side ran without torch (device=cpu, onnxruntime): its libraries would be most of a small model's RSS.
    assert not any(row["ours"][0]["torch_loaded"] for row in results["results"].values())
    assert {"decode.fp32.b1", "ttft.fp32.b1", "rss.int4.b1"} <= set(results["ratios"])
    assert set(results["agreement"]) == {"1", "2"} and all(total > 0 for _, total in results["agreement"].values())
    assert len(results["load_average"]) == 1
    from ascend_lab.telemetry.environment import thp_mode

    assert results["transparent_huge_pages"] == thp_mode()
    for text in ("round 1 fp32.b1", "(2 threads)", "load average before", "ratios of medians",
                 "greedy agreement at fp32, batch 1", f"transparent huge pages: {thp_mode() or 'none'}"):
        assert text in done.stdout, text
