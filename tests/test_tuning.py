"""Tuning: ATC settings as sweep axes (keep_dtype, fusion switches) with each job's accuracy, AOE before the
compile, and the automatic search on Hydra's Optuna sweeper.

- atc.keep_dtype / atc.fusion_switch_off become the files ATC reads, content-addressed, in the cache key by content;
  the stand-in atc checks those files the way the ATC pages describe them;
- atc.tuning runs the stand-in aoe (flags checked from the AOE pages) before the compile, logs its report, and atc
  reads the knowledge base it wrote; a missing aoe is a clear error naming set_env.sh; the tuning is in the key;
- the sweep summary marks and ranks last a setting that fails its accuracy gate;
- a trial's objective and its penalty; trial 0 of the search is the default configuration;
- CLI: the ATC preset through the stand-in atc and the pyACL simulator, an accuracy column per job; a 4-trial Optuna
  search on tiny_qwen writes best_overrides.txt, and replaying them reproduces the best trial's config.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ascend_lab.bench import summary
from ascend_lab.compile import ensure_compiled, plan_compile
from ascend_lab.compile.command import cache_key
from ascend_lab.config import AppConfig, validate
from ascend_lab.config.atc import AtcConfig
from ascend_lab.config.search import SearchConfig
from ascend_lab.errors import ConfigError, ToolchainError
from ascend_lab.tuning.objective import job_value

from conftest import FAKES, stand_in_env
from test_atc import RecordingTracker, toy_exported

sys.path.insert(0, str(FAKES))
from om_format import read_om  # noqa: E402

FAKE_BIN = FAKES / "bin"
FAST = ("benchmark.warmup=1", "benchmark.iterations=2", "benchmark.min_duration_s=0", "telemetry=off")


def context(tmp_path: Path, cfg: AppConfig, tracker=None):
    from ascend_lab.context import JobContext

    return JobContext(cfg, tracker or RecordingTracker(), tmp_path, tmp_path)


@pytest.fixture
def fake_path(monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{os.environ['PATH']}")


# ------------------------------------------------------------------------------------------------ ATC switches

def test_switch_lists_become_content_addressed_files_in_the_command_and_the_key(tmp_path):
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    plain = plan_compile(AppConfig(), tmp_path / "om", exported)
    cfg = AppConfig(atc=AtcConfig(precision_mode="force_fp16", keep_dtype=["OpType::Softmax", "attn/Add_1"],
                                  fusion_switch_off=["MatMulBiasAddFusionPass"]))
    plan = plan_compile(cfg, tmp_path / "om", exported)
    args = dict(a[2:].split("=", 1) for a in plan.argv[1:])
    keep, fusion = Path(args["keep_dtype"]), Path(args["fusion_switch_file"])
    assert keep.read_text() == "OpType::Softmax\nattn/Add_1\n"
    assert fusion.read_text() == "MatMulBiasAddFusionPass:off\n"
    elsewhere = plan_compile(cfg, tmp_path / "other_root", exported)
    assert elsewhere.key == plan.key  # the key follows the files' content, not their folder
    other = plan_compile(AppConfig(atc=AtcConfig(precision_mode="force_fp16", keep_dtype=["OpType::Softmax"])),
                         tmp_path / "om", exported)
    assert len({plain.key, plan.key, other.key}) == 3


def test_tuning_is_part_of_the_key_and_an_untuned_key_is_unchanged():
    argv = ["atc", "--framework=5", "--model=/a.onnx", "--soc_version=Ascend910B3"]
    assert cache_key("abc", argv, "8.0") == cache_key("abc", argv, "8.0", "none")
    assert len({cache_key("abc", argv, "8.0", t) for t in ("none", "subgraph", "operator")}) == 3


@pytest.mark.parametrize("fields,key", [
    ({"keep_dtype": ["Op Type::Softmax"]}, "atc.keep_dtype"),
    ({"fusion_switch_off": ["Fusion:off"]}, "atc.fusion_switch_off"),
    ({"tuning": "graph"}, "atc.tuning"),
    ({"extra_args": ["--keep_dtype=x.cfg"]}, "atc.extra_args"),
])
def test_switch_and_tuning_values_are_checked(fields, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        AtcConfig(**fields)


def test_keep_dtype_under_must_keep_origin_dtype_is_warned_about():
    with pytest.warns(UserWarning, match="has no effect"):
        AtcConfig(keep_dtype=["OpType::Softmax"])


def test_stand_in_atc_reads_the_switch_files_as_documented(tmp_path, fake_path):
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    cfg = AppConfig(atc=AtcConfig(precision_mode="force_fp16", keep_dtype=["OpType::Softmax"],
                                  fusion_switch_off=["MatMulBiasAddFusionPass"]))
    compiled = ensure_compiled(cfg, context(tmp_path, cfg), exported, required=True)
    header, _ = read_om(compiled.om_path)
    assert header["keep_dtype"] == ["OpType::Softmax"]
    assert header["fusion_switch_file"] == ["MatMulBiasAddFusionPass:off"]
    bad = tmp_path / "bad.cfg"
    bad.write_text("Softmax on\n")
    plan = plan_compile(cfg, tmp_path / "om", exported)
    argv = [a if not a.startswith("--fusion_switch_file=") else f"--fusion_switch_file={bad}" for a in plan.argv]
    proc = subprocess.run([str(FAKE_BIN / "atc"), *argv[1:]], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "E10001" in proc.stdout and "invalid lines" in proc.stdout


# ------------------------------------------------------------------------------------------------ AOE

@pytest.mark.parametrize("tuning,job_type,kind", [("subgraph", "1", "sgat"), ("operator", "2", "opat")])
def test_aoe_runs_before_the_compile_and_its_report_is_logged(tmp_path, fake_path, monkeypatch, tuning, job_type,
                                                              kind):
    calls = tmp_path / "aoe_calls.txt"
    monkeypatch.setenv("FAKE_AOE_CALLS", str(calls))
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    cfg = AppConfig(atc=AtcConfig(tuning=tuning))
    tracker = RecordingTracker()
    compiled = ensure_compiled(cfg, context(tmp_path, cfg, tracker), exported, required=True)
    (call,) = calls.read_text().splitlines()
    assert f"--job_type={job_type}" in call and "--framework=5" in call and f"--model={exported.onnx_path}" in call
    assert "--soc_version" not in call  # AOE tunes on the device it runs on
    assert tracker.metrics["aoe_improvement_pct"] == pytest.approx(3.5) and tracker.metrics["aoe_seconds"] >= 0
    logged = {(p.name, where) for p, where in tracker.artifacts}
    assert ("aoe.log", None) in logged and any(name.startswith(f"aoe_result_{kind}_") for name, _ in logged)
    header, _ = read_om(compiled.om_path)
    assert header["tune_bank"], "atc did not see the knowledge base AOE wrote (TUNE_BANK_PATH)"
    assert tracker.tags["atc.tuning"] == tuning
    again = ensure_compiled(cfg, context(tmp_path, cfg), exported, required=True)
    assert again.cache_hit and len(calls.read_text().splitlines()) == 1  # tuned once, then cached


def test_a_failing_aoe_fails_the_compile_with_its_log(tmp_path, fake_path, monkeypatch):
    from ascend_lab.compile.aoe import AoeError

    monkeypatch.setenv("FAKE_AOE_MODE", "fail")
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    cfg = AppConfig(atc=AtcConfig(tuning="operator"))
    with pytest.raises(AoeError, match=r"AOE failed \(exit status 1[\s\S]*injected failure"):
        ensure_compiled(cfg, context(tmp_path, cfg), exported, required=True)


def test_missing_aoe_names_set_env_sh(tmp_path, monkeypatch):
    from ascend_lab.cann import toolkit as cann_toolkit

    if cann_toolkit.find_set_env() is not None:
        pytest.skip("a CANN toolkit is installed on this host")
    only_atc = tmp_path / "bin"
    only_atc.mkdir()
    (only_atc / "atc").symlink_to(FAKE_BIN / "atc")
    monkeypatch.setenv("PATH", f"{only_atc}:/usr/bin:/bin")
    exported = toy_exported(tmp_path / "kv.onnx", "kv_cache")
    cfg = AppConfig(atc=AtcConfig(tuning="subgraph"))
    with pytest.raises(ToolchainError) as info:
        ensure_compiled(cfg, context(tmp_path, cfg), exported, required=True)
    message = str(info.value)
    assert message.startswith("aoe (atc.tuning=subgraph") and "set_env.sh" in message
    assert "/usr/local/Ascend/ascend-toolkit/set_env.sh" in message


def test_stand_in_aoe_checks_its_flags(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    run = lambda *args: subprocess.run([str(FAKE_BIN / "aoe"), *args], capture_output=True, text=True, timeout=30,
                                       env={**os.environ, "ASCEND_WORK_PATH": str(tmp_path)})
    assert run("--framework=5", f"--model={model}").returncode == 1  # --job_type is required
    bad = run("--framework=5", f"--model={model}", "--job_type=3")
    assert bad.returncode == 1 and "1 (subgraph tuning) or 2 (operator tuning)" in bad.stdout
    assert "unknown option" in run("--framework=5", f"--model={model}", "--job_type=1", "--turbo=1").stdout
    ok = run("--framework=5", f"--model={model}", "-j", "2")
    assert ok.returncode == 0 and "[Aoe]Aoe process finished" in ok.stdout
    assert list(tmp_path.glob("aoe_result_opat_*_pid*.json"))


# ------------------------------------------------------------------------------------------------ summary ranking

def bench_run(label: str, decode: float, gate: float | None):
    metrics = {"e2e_ms_mean": 10.0, "decode_tokens_s": decode, "throughput_tokens_s": decode,
               "tf_top1_agreement_mean": 1.0 if gate else 0.5, "tf_max_abs_diff_max": 0.01 if gate else 3.0}
    if gate is not None:
        metrics["accuracy_gate_passed"] = gate
    return SimpleNamespace(info=SimpleNamespace(status="FINISHED"),
                           data=SimpleNamespace(metrics=metrics, tags={"batch_size": "1", "runtime": "acl",
                                                                       "model": "tiny_qwen", "scenario": "generate"},
                                                params={"benchmark.batch_size": "1", "atc.precision_mode": label}))


def test_a_fast_setting_that_breaks_accuracy_is_marked_and_ranked_last(tmp_path):
    runs = [bench_run("must_keep_origin_dtype", 100.0, 1.0), bench_run("force_fp16", 300.0, 0.0),
            bench_run("allow_fp32_to_fp16", 150.0, 1.0)]
    rows = [summary.row_from_run(r) for r in runs]
    keys = summary.assign_groups(rows)
    ordered = summary.sort_rows(rows)
    assert [r.group["atc.precision_mode"] for r in ordered] == ["allow_fp32_to_fp16", "must_keep_origin_dtype",
                                                                 "force_fp16"]
    headers, cells = summary.table(ordered, keys)
    assert "accuracy ok" in headers and "max |Δ| logits" in headers
    ok = headers.index("accuracy ok")
    assert [c[ok] for c in cells] == ["yes", "yes", "NO"]
    text, paths = summary.write_files(ordered, keys, tmp_path, "t")
    import matplotlib.image

    assert matplotlib.image.imread(paths[2]).shape[1] >= 1000  # the speed-against-accuracy panel was added


# ------------------------------------------------------------------------------------------------ the search

def test_objective_returns_the_metric_or_the_penalty():
    row = summary.Row(1, "onnxruntime", "generate", "tiny_qwen", {"decode_tokens_s": 120.0, "tpot_ms_p99": 9.0})
    tracker = RecordingTracker()
    assert job_value(AppConfig(), row, tracker) is row  # not a search: the task's own result
    cfg = AppConfig(search=SearchConfig(objective=True, max_tpot_p99_ms=10.0))
    assert job_value(cfg, row, tracker) == 120.0 and tracker.metrics["search_feasible"] == 1.0
    cfg = AppConfig(search=SearchConfig(objective=True, max_tpot_p99_ms=5.0, infeasible_value=-1.0))
    assert job_value(cfg, row, tracker) == -1.0 and tracker.metrics["search_feasible"] == 0.0
    assert tracker.tags["search.feasible"].startswith("no: tpot_ms_p99=9 ms > search.max_tpot_p99_ms=5")


def test_search_settings_are_checked(compose):
    with pytest.raises(ConfigError, match="search.max_tpot_p99_ms"):
        SearchConfig(max_tpot_p99_ms=0)
    with pytest.raises(ConfigError, match="search.metric"):
        SearchConfig(metric="latency_ms_mean")
    with pytest.raises(ConfigError, match=r"search\.objective.*only task=bench"):
        validate(compose("task=infer", "search.objective=true"))


def test_the_first_trial_is_the_default_configuration():
    import optuna
    from optuna.distributions import CategoricalDistribution

    from ascend_lab.tuning.sampler import DefaultsFirstSampler

    space = {"runtime.intra_op_threads": CategoricalDistribution((4, 2, 0)),
             "runtime.graph_optimization": CategoricalDistribution(("basic", "all"))}
    study = optuna.create_study(sampler=DefaultsFirstSampler(seed=0, n_startup_trials=1), direction="maximize")
    first = study.ask(space)
    assert first.params == {"runtime.intra_op_threads": 0, "runtime.graph_optimization": "all"}
    study.tell(first, 1.0)
    for _ in range(3):
        trial = study.ask(space)
        study.tell(trial, 2.0)
    no_default = optuna.create_study(sampler=DefaultsFirstSampler(seed=0))
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.params\.runtime\.intra_op_threads"):
        no_default.ask({"runtime.intra_op_threads": CategoricalDistribution((1, 2))})


# ------------------------------------------------------------------------------------------------ the CLI

@pytest.mark.slow
def test_atc_preset_runs_through_the_stand_in_with_accuracy_per_job(run_cli, mlflow_runs, tmp_path):
    import json

    from sweep_helpers import split_runs

    leaks = tmp_path / "leaks.json"
    env = stand_in_env(leaks)
    proc = run_cli("-m", "+experiment=atc_tuning", "atc.precision_mode=must_keep_origin_dtype,force_fp16",
                   "atc.op_select_implmode=high_precision", "atc.keep_dtype=[]", "benchmark.new_tokens=6",
                   "accuracy.new_tokens=6", "accuracy.prompts=[hello,'你好']", *FAST, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    client, _ = mlflow_runs(tmp_path)
    (parent,), children = split_runs(client)
    assert len(children) == 2
    for child in children:
        m, params = child.data.metrics, child.data.params
        assert child.data.tags["runtime"] == "acl" and params["atc.op_select_implmode"] == "high_precision"
        for key in ("decode_tokens_s", "tf_top1_agreement_mean", "tf_max_abs_diff_max", "accuracy_gate_passed"):
            assert key in m, (key, params["atc.precision_mode"])
        assert child.data.tags["accuracy.gate"].startswith("accuracy gate")
    assert "greedy agreement" in proc.stdout
    local = Path(client.download_artifacts(parent.info.run_id, "summary.md", str(tmp_path)))
    text = local.read_text()
    # The one markdown rule escapes a header's "|", so the table keeps its columns.
    assert "top-1 agreement" in text and r"max \|Δ\| logits" in text and "accuracy ok" in text
    assert "must_keep_origin_dtype" in text and "force_fp16" in text
    assert json.loads(leaks.read_text())["leaks"] == []


@pytest.mark.slow
def test_a_four_trial_search_writes_best_overrides_that_replay_the_best_trial(run_cli, mlflow_runs, tmp_path,
                                                                              compose):
    from sweep_helpers import split_runs

    proc = run_cli("-m", "+hparams_search=decode", "hydra.sweeper.n_trials=4", "benchmark.new_tokens=6",
                   "search.max_tpot_p99_ms=1000", *FAST, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "against the default's" in proc.stdout and "replay the best: python -m ascend_lab.run" in proc.stdout
    client, _ = mlflow_runs(tmp_path)
    (parent,), children = split_runs(client)
    assert len(children) == 4 and all("search_objective" in c.data.metrics for c in children)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_overrides.txt", "search_trials.png", "search_report.md", "summary.csv"} <= names
    pm = parent.data.metrics
    assert pm["search_trials"] == 4 and pm["search_best_value"] >= pm["search_default_value"] > 0
    assert pm["search_speedup"] == pytest.approx(pm["search_best_value"] / pm["search_default_value"])
    default = next(c for c in children if c.data.tags["job_num"] == "0")
    assert default.data.params["runtime.intra_op_threads"] == "0" and default.data.params["benchmark.batch_size"] == "1"
    best = client.get_run(parent.data.tags["search.best_run"])
    assert best.data.metrics["search_objective"] == pm["search_best_value"]
    overrides = shlex.split(Path(client.download_artifacts(parent.info.run_id, "best_overrides.txt",
                                                           str(tmp_path))).read_text())
    # The file is in the sweep's folder too, its path printed, and the replay command works as printed.
    printed = Path(re.search(r"^best overrides: (.+)$", proc.stdout, re.M).group(1))
    assert printed == Path(parent.data.tags["sweep_dir"]) / "best_overrides.txt"
    assert shlex.split(printed.read_text()) == overrides
    replay = shlex.split(re.search(r"^replay the best: (.+)$", proc.stdout, re.M).group(1))
    assert replay == ["python", "-m", "ascend_lab.run", *overrides]
    output = proc.stdout + proc.stderr
    # Our output only: no "has no effect" for the preset, no alembic set-up lines, no Optuna colours.
    assert "has no effect" not in output and "setup plugin" not in output and "\x1b[" not in output, output
    replayed = validate(compose(*overrides))
    from ascend_lab.tracking.metadata import config_params

    params = config_params(replayed)
    for key in ("runtime.intra_op_threads", "runtime.inter_op_threads", "runtime.graph_optimization",
                "benchmark.batch_size", "benchmark.new_tokens", "runtime.name", "task", "search.max_tpot_p99_ms"):
        assert str(params[key]) == best.data.params[key], key
