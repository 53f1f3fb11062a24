"""task=accuracy: the metrics (one definition each), teacher forcing, the comparison of two runtimes, the gate,
the layer report's debug graph (on torch, onnxruntime and the pyACL simulator), fault injection (one weight of
one decoder layer scaled in the ONNX file: the gate fails and the report names that layer), the prompt file,
bad inputs, and the CLI end to end (single runs, a sweep with a failed gate, the acl candidate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ascend_lab import graph_contract as gc
from ascend_lab.accuracy import metrics
from ascend_lab.accuracy.compare import Prompt, compare, decode, layer_drift, layer_hidden
from ascend_lab.accuracy.gate import AccuracyGateError, evaluate
from ascend_lab.accuracy.prompts import read_prompts_file
from ascend_lab.config import AppConfig
from ascend_lab.config.accuracy import PRECISIONS, AccuracyConfig, GateThresholds, default_gates
from ascend_lab.config.export import ExportConfig
from ascend_lab.config.model import ModelConfig
from ascend_lab.device import Device
from ascend_lab.errors import ConfigError

from conftest import load_torch_runtime, stand_in_env

CAPACITY = 1024
CPU = Device("cpu", 0, "test")
LAYERS = 4  # the fault-injection model: tiny_qwen with 4 layers, so "the first drifting layer" is a real choice
FAULTY_LAYER = 2
FAULTY_WEIGHT = f"model.model.layers.{FAULTY_LAYER}.mlp.down_proj.weight"



def compare_runtimes(reference, candidate, prompts, new_tokens, capacity):
    """Both sides open together: the reference's tokens, the candidate teacher-forced and free-running."""
    ref = decode(reference, prompts, new_tokens, capacity)
    tf = decode(candidate, prompts, new_tokens, capacity, [r.tokens for r in ref])
    return compare(prompts, ref, tf, decode(candidate, prompts, new_tokens, capacity))


# ------------------------------------------------------------------------------------------------
# Metrics



def test_identical_rows_score_exactly_perfect():
    rows = np.random.default_rng(0).standard_normal((6, 384)).astype(np.float32) * 7
    figures = metrics.logit_metrics(rows, rows.copy())
    assert (figures["cosine"] == 1.0).all() and (figures["kl"] == 0.0).all()
    assert (figures["max_abs_diff"] == 0.0).all() and (figures["rel_l2"] == 0.0).all()
    assert (figures["top1_agreement"] == 1.0).all() and (figures["top5_overlap"] == 1.0).all()


def test_metrics_measure_what_their_names_say():
    ref = np.array([[1.0, 0.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0]])
    cand = np.array([[0.0, 1.0, 0.0, 0.0], [6.0, 8.0, 0.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_similarity(ref, cand), [0.0, 1.0])  # orthogonal; same direction
    np.testing.assert_allclose(metrics.max_abs_diff(ref, cand), [1.0, 4.0])
    np.testing.assert_allclose(metrics.relative_l2(ref, cand), [np.sqrt(2), 1.0])
    assert metrics.cosine_similarity(np.zeros(3), np.zeros(3)) == 1.0
    assert metrics.cosine_similarity(np.zeros(3), np.ones(3)) == 0.0
    p, q = np.log([0.5, 0.25, 0.25]), np.log([0.25, 0.5, 0.25])
    assert metrics.kl_divergence(p, q) == pytest.approx(0.5 * np.log(2) + 0.25 * np.log(0.5))
    assert metrics.kl_divergence(np.array([1e4, 0.0]), np.array([1e4, 0.0])) == 0.0  # no overflow
    np.testing.assert_array_equal(metrics.top1_agreement(ref, cand), [0.0, 1.0])
    a = np.array([9, 8, 7, 6, 5, 0, 0, 0], float)
    b = np.array([9, 8, 7, 0, 0, 6, 5, 0], float)
    assert metrics.topk_overlap(a, b) == pytest.approx(3 / 5)
    assert metrics.common_prefix_length([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert metrics.common_prefix_length([1, 2], [1, 2]) == 2


def test_a_nan_candidate_fails_every_check():
    ref = np.ones((2, 8))
    cand = ref.copy()
    cand[1, 3] = np.nan
    aggregate = {"tf_cosine_min": float(np.min(metrics.cosine_similarity(ref, cand))),
                 "tf_top1_agreement_mean": 1.0,
                 "tf_kl_mean": float(np.mean(metrics.kl_divergence(ref, cand)))}
    verdict = evaluate(aggregate, GateThresholds(), "float32")
    assert not verdict.passed and {c.metric for c in verdict.failed} == {"tf_cosine_min", "tf_kl_mean"}


def test_the_gate_message_is_one_line_naming_metric_value_and_threshold():
    aggregate = {"tf_cosine_min": 0.97, "tf_top1_agreement_mean": 0.99, "tf_kl_mean": 1e-6}
    verdict = evaluate(aggregate, default_gates()["int8"], "int8")
    with pytest.raises(AccuracyGateError) as err:
        verdict.raise_if_failed()
    message = str(err.value)
    assert "\n" not in message
    assert "tf_cosine_min = 0.97 < 0.99 (accuracy.gate.int8.min_cosine)" in message
    assert "top1" not in message  # passed checks are not listed in a failure
    passing = evaluate({**aggregate, "tf_cosine_min": 0.995}, default_gates()["int8"], "int8")
    assert passing.passed and passing.line().startswith("accuracy gate passed (int8 thresholds)")


# ------------------------------------------------------------------------------------------------
# Config and prompts


def test_every_precision_has_documented_defaults():
    gates = AccuracyConfig().gate
    assert sorted(gates) == sorted(PRECISIONS)
    assert gates["float32"] == GateThresholds()  # the field defaults are the float32 row
    assert gates["float32"].min_cosine > gates["float16"].min_cosine > gates["int8"].min_cosine - 1e-9
    assert gates["float32"].max_mean_kl < gates["float16"].max_mean_kl < gates["int8"].max_mean_kl


@pytest.mark.parametrize("field, value, message", [
    ("min_cosine", 1.5, "between -1 and 1"),
    ("min_cosine", -1.01, "between -1 and 1"),
    ("min_top1_agreement", 1.2, "between 0 and 1"),
    ("min_top1_agreement", -0.1, "between 0 and 1"),
    ("max_mean_kl", -1e-3, "≥ 0"),
    ("layer_tolerance", 0.0, "> 0"),
    ("min_cosine", float("nan"), "between -1 and 1"),
])
def test_thresholds_out_of_range_are_refused(field, value, message):
    gates = default_gates()
    setattr(gates["int8"], field, value)
    with pytest.raises(ConfigError, match=rf"accuracy\.gate\.int8\.{field}=.*{message}"):
        AccuracyConfig(gate=gates)


def test_prompt_file_problems_name_the_key_and_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=r"accuracy\.prompts_file=.*nope\.txt.*does not exist"):
        read_prompts_file(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"accuracy\.prompts_file=.*empty\.txt.*holds no prompt"):
        read_prompts_file(empty)
    latin = tmp_path / "gbk.txt"
    latin.write_bytes("你好".encode("gbk"))
    with pytest.raises(ConfigError, match=r"accuracy\.prompts_file=.*gbk\.txt.*not UTF-8"):
        read_prompts_file(latin)
    good = tmp_path / "prompts.txt"
    good.write_text("\ufeff你好,昇腾!\n\n  The capital of France is  \n", encoding="utf-8")
    assert read_prompts_file(good) == ["你好,昇腾!", "The capital of France is"]


# ------------------------------------------------------------------------------------------------
# Runtimes: teacher forcing, identical sides, the debug graph, fault injection


def tiny_cfg(**export_fields) -> AppConfig:
    return AppConfig(model=ModelConfig(num_hidden_layers=LAYERS), export=ExportConfig(**export_fields))


def prompts() -> list[Prompt]:
    rng = np.random.default_rng(3)
    return [Prompt(f"p{i}", tuple(int(t) for t in rng.integers(0, 384, size=n))) for i, n in enumerate((5, 19, 9))]


@pytest.fixture(scope="module")
def torch_debug():
    """The 4-layer tiny model on torch, its graph with the layer outputs."""
    with load_torch_runtime(tiny_cfg(layer_outputs=True), CPU) as runtime:
        yield runtime


@pytest.fixture(scope="module")
def exported_debug(tmp_path_factory):
    """That model exported with the layer outputs (float32 through the export cache)."""
    from ascend_lab.context import JobContext
    from ascend_lab.export import ensure_exported
    from ascend_lab.tracking import Tracker

    launch = tmp_path_factory.mktemp("accuracy_exports")
    cfg = tiny_cfg(layer_outputs=True)
    return ensure_exported(cfg, JobContext(cfg, Tracker(), launch, launch))


def test_teacher_forcing_feeds_the_given_tokens(torch_debug):
    """Step k of a teacher-forced generation has the logits of the prompt + the given tokens' prefill."""
    prompt = prompts()[0]
    teacher = np.array([7, 300, 12, 99], dtype=np.int64)
    (forced,) = decode(torch_debug, [prompt], 5, CAPACITY, [teacher])
    for k in range(1, 5):
        (prefilled,) = decode(torch_debug, [Prompt("", prompt.ids + tuple(teacher[:k]))], 1, CAPACITY)
        np.testing.assert_allclose(forced.logits[k], prefilled.logits[0], rtol=1e-4, atol=1e-5)
    (free,) = decode(torch_debug, [prompt], 5, CAPACITY)
    assert not np.allclose(forced.logits[1:], free.logits[1:])  # the teacher's tokens were really fed


def test_a_candidate_identical_to_its_reference_passes_with_cosine_one(torch_debug):
    comparison = compare_runtimes(torch_debug, torch_debug, prompts(), 6, CAPACITY)
    aggregate = comparison.aggregate()
    assert aggregate["tf_cosine_min"] == 1.0 and aggregate["fr_cosine_min"] == 1.0
    assert aggregate["tf_top1_agreement_mean"] == 1.0 and aggregate["tf_top5_overlap_min"] == 1.0
    assert aggregate["tf_kl_max"] == 0.0 and aggregate["tf_max_abs_diff_max"] == 0.0
    assert aggregate["fr_common_prefix_min"] == 6
    assert evaluate(aggregate, GateThresholds(), "float32").passed


def test_the_static_decoder_is_refused_for_teacher_forcing():
    with load_torch_runtime(AppConfig(), CPU, graph_capture=True) as runtime:
        with pytest.raises(ConfigError, match=r"runtime\.graph_capture=True.*teacher forcing"):
            runtime.engine(20, CAPACITY, keep_logits=True)
        runtime.engine(20, CAPACITY)  # without keep_logits it still selects the static decoder


def test_the_debug_graph_keeps_the_plain_graphs_outputs(exported_debug, torch_debug):
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    contract = exported_debug.contract
    assert contract.layer_outputs and contract.output_names()[-1] == gc.LAYER_HIDDEN_STATES
    assert exported_debug.extra["parity_cosine"] > 0.999999 and exported_debug.extra["parity_kl"] < 1e-9
    with OnnxRuntime(exported_debug.onnx_path, contract) as ort_runtime:
        hidden = layer_hidden(ort_runtime, prompts(), CAPACITY)
        assert hidden[0].shape == (LAYERS, 64)
        drift = layer_drift(layer_hidden(torch_debug, prompts(), CAPACITY), hidden, 1e-3)
        assert drift.first_over is None and float(np.max(drift.worst_rel_error)) < 1e-5
    with pytest.raises(Exception, match="export.layer_outputs=true"):
        with load_torch_runtime(tiny_cfg(), CPU) as plain:
            layer_hidden(plain, prompts(), CAPACITY)


def test_the_float16_debug_graph_passes_atcs_op_check(tmp_path):
    from ascend_lab.compile.opcheck import check_graph
    from ascend_lab.context import JobContext
    from ascend_lab.export import ensure_exported
    from ascend_lab.tracking import Tracker

    cfg = AppConfig(export=ExportConfig(layer_outputs=True))
    exported = ensure_exported(cfg, JobContext(cfg, Tracker(), tmp_path, tmp_path), dtype=cfg.atc.export_dtype)
    assert exported.dtype == "float16" and exported.layer_outputs
    result = check_graph(exported.onnx_path, cfg.atc.precision_mode, cfg.atc.precision_mode_v2)
    assert result.ok, result.summary()


def scaled_copy(exported, out_dir: Path, name: str, factor: float) -> Path:
    """The exported ONNX with initializer ``name`` multiplied by ``factor`` (a weight that went wrong)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported.onnx_path))
    (init,) = [i for i in model.graph.initializer if i.name == name]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), name))
    path = out_dir / "faulty.onnx"
    onnx.save(model, str(path))
    return path


def test_fault_injection_fails_the_gate_and_names_the_layer(exported_debug, torch_debug, tmp_path):
    """One decoder layer's down projection scaled by 1.5 in the ONNX file: the gate fails naming the metric,
    and the layer report names exactly that layer as the first to drift (the ones before it are exact)."""
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    faulty = scaled_copy(exported_debug, tmp_path, FAULTY_WEIGHT, 1.5)
    thresholds = default_gates()["float32"]
    with OnnxRuntime(faulty, exported_debug.contract) as candidate:
        comparison = compare_runtimes(torch_debug, candidate, prompts(), 6, CAPACITY)
        verdict = evaluate(comparison.aggregate(), thresholds, "float32")
        with pytest.raises(AccuracyGateError, match=r"accuracy gate FAILED \(float32 thresholds\): tf_cosine_min = "
                                                     r"[0-9.]+ < 0\.9999 \(accuracy\.gate\.float32\.min_cosine\)"):
            verdict.raise_if_failed()
        drift = layer_drift(layer_hidden(torch_debug, prompts(), CAPACITY),
                            layer_hidden(candidate, prompts(), CAPACITY), thresholds.layer_tolerance)
    assert drift.first_over == FAULTY_LAYER
    assert (drift.worst_rel_error[:FAULTY_LAYER] < 1e-5).all()
    assert drift.worst_rel_error[FAULTY_LAYER] > 10 * thresholds.layer_tolerance


def test_the_report_files_and_metrics_are_defined_once(torch_debug, tmp_path):
    from ascend_lab.accuracy import report
    from ascend_lab.tracking import Tracker

    class Recording(Tracker):
        def __init__(self):
            self.calls = []

        def log_metrics(self, values, step=None):
            self.calls.append((dict(values), step))

    comparison = compare_runtimes(torch_debug, torch_debug, prompts(), 4, CAPACITY)
    table = report.write_comparison(comparison, tmp_path, "title", "verdict")
    assert "all prompts" in table and "min cosine TF" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(report.PROMPTS_FILES + report.STEPS_FILES)
    tracker = Recording()
    report.log_comparison(tracker, comparison)
    (aggregate, no_step), *per_step = tracker.calls
    assert no_step is None and aggregate["tf_cosine_min"] == 1.0
    assert [step for _, step in per_step] == [0, 1, 2, 3] and "step/tf_kl" in per_step[0][0]


# ------------------------------------------------------------------------------------------------
# The CLI


def accuracy_runs(mlflow_runs, launch):
    _, runs = mlflow_runs(launch)
    return [r for r in runs if r.data.tags.get("task") == "accuracy" and r.data.tags.get("sweep") != "parent"]


@pytest.mark.slow
def test_cli_onnxruntime_candidate_passes_and_records_everything(run_cli, mlflow_runs, tmp_path, export_cache):
    proc = run_cli("task=accuracy", "runtime=onnxruntime", "accuracy.new_tokens=6", export_cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "candidate: onnxruntime float32 on cpu" in proc.stdout and "reference: torch float32 on cpu" in proc.stdout
    assert "| all prompts" in proc.stdout and "The capital of France is" in proc.stdout
    assert "accuracy gate passed (float32 thresholds)" in proc.stdout
    (run,) = accuracy_runs(mlflow_runs, tmp_path)
    client, _ = mlflow_runs(tmp_path)
    m = run.data.metrics
    assert run.info.status == "FINISHED" and m["accuracy_gate_passed"] == 1.0
    assert m["tf_cosine_min"] > 0.9999 and m["tf_top1_agreement_mean"] == 1.0 and m["fr_common_prefix_min"] == 6
    assert len(client.get_metric_history(run.info.run_id, "step/tf_kl")) == 6
    assert "layer_first_drift" not in m  # the report runs on failure only (accuracy.layer_report=on_failure)
    files = {f.path for f in client.list_artifacts(run.info.run_id, "accuracy")}
    assert {"accuracy/accuracy_steps.png", "accuracy/accuracy_prompts.csv", "accuracy/accuracy_prompts.md"} <= files
    assert run.data.tags["reference.runtime"] == "torch" and len(run.data.tags["onnx_sha256"]) == 64


@pytest.mark.slow
def test_cli_chinese_prompt_file_and_an_identical_candidate(run_cli, tmp_path):
    """A user's UTF-8 prompt file with Chinese works; torch float32 on the CPU against itself is exact."""
    (tmp_path / "prompts.txt").write_text("昇腾芯片的算力有多大?\n\n今天天气很好,我们去公园散步。\n", encoding="utf-8")
    proc = run_cli("task=accuracy", "runtime=torch", "device=cpu", "tracking=off", "accuracy.prompts_file=prompts.txt",
                   "accuracy.new_tokens=5", "accuracy.layer_report=always")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "昇腾芯片的算力有多大?" in proc.stdout and "今天天气很好" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| all prompts")]
    assert rows and "1.000000" in rows[0] and "| 1.000" in rows[0]  # cosine 1, full agreement
    assert "no decoder layer's hidden state is over the tolerance" in proc.stdout


@pytest.mark.slow
def test_cli_sweep_with_a_failed_gate(run_cli, mlflow_runs, tmp_path, export_cache):
    """Under -m the job whose gate fails is FAILED (after logging everything, its layer report included), the
    parent reports 1 of 2 failed, the exit status is non-zero with the gate's line, and the summary table shows
    the accuracy columns for both jobs."""
    proc = run_cli("-m", "task=accuracy", "runtime=onnxruntime", "export.quantize=none,int8", "accuracy.new_tokens=4",
                   "accuracy.gate.int8.min_cosine=1.0", export_cache)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    assert "accuracy gate FAILED (int8 thresholds): tf_cosine_min = " in proc.stderr.strip().splitlines()[-1]
    _, runs = mlflow_runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert parent.info.status == "FAILED" and parent.data.tags["error"] == "1 of 2 jobs failed"
    children = {r.data.params["export.quantize"]: r for r in accuracy_runs(mlflow_runs, tmp_path)}
    failed, passed = children["int8"], children["none"]
    assert passed.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert "accuracy.gate.int8.min_cosine" in failed.data.tags["error"]
    assert failed.data.metrics["accuracy_gate_passed"] == 0.0 and "layer_first_drift" in failed.data.metrics
    for header in ("top-1 agreement", "1 − min logits cosine", "mean KL", "accuracy gate passed"):
        assert header in proc.stdout, header


@pytest.mark.slow
def test_cli_acl_candidate_end_to_end_with_the_layer_report(run_cli, tmp_path, export_cache):
    """The .om (fake atc, pyACL simulator) against torch float32: float16 thresholds, and the layer report's
    debug graph goes the same way (export with the layer outputs → op check → compile → pyACL)."""
    proc = run_cli("task=accuracy", "runtime=acl", "tracking=off", "accuracy.new_tokens=4",
                   "accuracy.layer_report=always", "accuracy.gate.float16.min_top1_agreement=0.5", export_cache,
                   env=stand_in_env(tmp_path / "leaks.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "candidate: acl float16" in proc.stdout and "accuracy gate passed (float16 thresholds)" in proc.stdout
    assert "layer report:" in proc.stdout and "| 1     |" in proc.stdout  # a row per layer of tiny_qwen
    assert len(list(tmp_path.glob("outputs/om/*/*.om"))) == 2  # the plain graph and its debug variant
    assert json.loads((tmp_path / "leaks.json").read_text())["leaks"] == []


@pytest.mark.slow
@pytest.mark.parametrize("overrides, named", [
    (("accuracy.prompts_file=missing.txt",), ("accuracy.prompts_file=", "missing.txt", "does not exist")),
    (("accuracy.prompts_file=empty.txt",), ("accuracy.prompts_file=", "empty.txt", "holds no prompt")),
    (("accuracy.gate.float32.min_cosine=1.5",), ("accuracy.gate.float32.min_cosine=1.5", "between -1 and 1")),
    (("accuracy.gate.int8.max_mean_kl=-1",), ("accuracy.gate.int8.max_mean_kl=-1", "≥ 0")),
    (("accuracy.gate.float16.min_top1_agreement=2",), ("accuracy.gate.float16.min_top1_agreement=2",
                                                        "between 0 and 1")),
], ids=["missing prompt file", "empty prompt file", "cosine above 1", "negative KL", "agreement above 1"])
def test_bad_accuracy_inputs_get_a_clear_error(run_cli, tmp_path, overrides, named):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    proc = run_cli("task=accuracy", "runtime=onnxruntime", "tracking=off", *overrides)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "Traceback" not in output
    for text in named:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr}"
    assert not list(tmp_path.glob("outputs/export_cache/*")), "failed after work had started"
