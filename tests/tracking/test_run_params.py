"""Params record what ran, and a job's identity is what its task reads.

- The resume hash (tag ``config_hash``) covers ``task``, ``seed`` and the groups in
  ``ascend_lab.config.TASK_GROUPS[task]``: ``mnist.lr`` does not make a finished bench job run again.
- With ``model.weights=pretrained model.path=<folder>`` the logged architecture figures and
  ``model.model_id`` are the folder's, not the preset's, and the folder and its config.json hash are tagged.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from ascend_lab.config import TASK_GROUPS, Task
from ascend_lab.models import NOT_IN_CONFIG_JSON, local_checkpoint
from ascend_lab.tracking import config_hash, task_params

from conftest import SMALL_BANDWIDTH

FAST_BENCH = ("task=bench", "tracking.skip_finished=true", "benchmark.iterations=1", "benchmark.warmup=0",
              "benchmark.min_duration_s=0", "runtime=onnxruntime", SMALL_BANDWIDTH)


def test_hash_covers_only_the_groups_the_task_reads(compose):
    bench = config_hash(compose("task=bench"))
    assert config_hash(compose("task=bench", "mnist.lr=0.5")) == bench
    assert config_hash(compose("task=bench", "doctor.repeats=7")) == bench
    assert config_hash(compose("task=bench", "tracking.skip_finished=true", "tracking.experiment=x")) == bench
    assert config_hash(compose("task=bench", "benchmark.batch_size=2")) != bench
    assert config_hash(compose("task=bench", "seed=1")) != bench
    assert config_hash(compose("task=mnist", "mnist.lr=0.5")) != config_hash(compose("task=mnist"))
    assert config_hash(compose("task=infer")) != bench  # same groups, other task


def test_task_params_keep_task_seed_and_the_task_groups():
    params = {"task": "pipeline", "seed": 3, "mnist.lr": 0.1, "benchmark.batch_size": 4, "tracking.uri": "x",
              "device.name": "cpu", "modelx.odd": 1}
    kept = task_params(params, Task.bench)
    assert kept == {"task": "bench", "seed": 3, "benchmark.batch_size": 4, "device.name": "cpu"}
    assert all(key.split(".")[0] in (*TASK_GROUPS[Task.bench], "task", "seed") for key in kept)


def _write_config(folder, **fields):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(fields))


def test_local_checkpoint_reads_config_json_names_of_every_era(tmp_path, compose):
    from ascend_lab.config import validate

    # transformers 5 nests rope_theta; the original Qwen names it rotary_emb_base.
    _write_config(tmp_path / "new", num_hidden_layers=3, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
    _write_config(tmp_path / "qwen1", rotary_emb_base=20000, layer_norm_epsilon=1e-5)
    for name, theta, eps in (("new", 10000.0, NOT_IN_CONFIG_JSON), ("qwen1", 20000, 1e-5)):
        cfg = validate(compose("model=qwen2_5_0_5b_instruct", f"model.path={tmp_path / name}"))
        record = local_checkpoint(cfg.model)
        assert record.architecture["rope_theta"] == theta and record.architecture["rms_norm_eps"] == eps
        assert record.params()["model.model_id"] == str((tmp_path / name).resolve())
        assert record.tags()["model.preset_model_id"] == "qwen/Qwen2.5-0.5B-Instruct"
    assert local_checkpoint(validate(compose("model=qwen2_5_0_5b_instruct")).model) is None  # ModelScope id
    assert local_checkpoint(validate(compose()).model) is None  # random weights


def test_local_checkpoint_with_a_broken_config_json_names_the_key_and_file(tmp_path, compose):
    from ascend_lab.config import validate
    from ascend_lab.errors import AscendLabError

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    cfg = validate(compose("model=qwen2_5_0_5b_instruct", f"model.path={tmp_path / 'ckpt'}"))
    with pytest.raises(AscendLabError, match=r"model.path=.*config.json is not valid JSON"):
        local_checkpoint(cfg.model)


@pytest.mark.slow
def test_changing_another_tasks_group_does_not_rerun_a_finished_bench_job(run_cli, mlflow_runs, tmp_path):
    first = run_cli(*FAST_BENCH, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    _, runs = mlflow_runs(tmp_path)
    (finished,) = runs
    again = run_cli(*FAST_BENCH, "mnist.lr=0.5", timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already has the FINISHED MLflow run {finished.info.run_id}" in again.stdout
    assert len(mlflow_runs(tmp_path)[1]) == 1  # no new run
    other = run_cli(*FAST_BENCH, "benchmark.batch_size=2", timeout=300)
    assert other.returncode == 0, other.stdout + other.stderr
    assert "Skipped" not in other.stdout
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2 and len({r.data.tags["config_hash"] for r in runs}) == 2


def _tiny_checkpoint(folder):
    """A real Qwen2 checkpoint (random tiny weights, rope_theta 1e4) with the offline byte tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ascend_lab.models import build_byte_tokenizer

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=256, pad_token_id=256)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    build_byte_tokenizer().save_pretrained(folder)
    return {"num_hidden_layers": "1", "hidden_size": "32", "num_attention_heads": "4", "num_key_value_heads": "2",
            "intermediate_size": "64", "vocab_size": "384", "max_position_embeddings": "256",
            "rope_theta": "10000.0", "rms_norm_eps": "1e-05", "tie_word_embeddings": "True"}


@pytest.mark.slow
def test_a_local_checkpoint_run_logs_the_loaded_model_not_the_preset(run_cli, mlflow_runs, tmp_path):
    folder = tmp_path / "ckpt"
    expected = _tiny_checkpoint(folder)
    # The preset says 24 layers, rope_theta 1e6 and a ModelScope id; the folder (given relative to the
    # launch directory) is what loads.
    proc = run_cli("task=export", "model=qwen2_5_0_5b_instruct", "model.weights=pretrained", "model.path=ckpt",
                   timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _, (run,) = mlflow_runs(tmp_path)
    params, tags = run.data.params, run.data.tags
    assert {k: params[f"model.{k}"] for k in expected} == expected
    assert params["model.model_id"] == str(folder.resolve()) and params["model.path"] == "ckpt"
    assert tags["model.path"] == str(folder.resolve())
    assert tags["model.config_sha256"] == hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    assert tags["model.preset_model_id"] == "qwen/Qwen2.5-0.5B-Instruct"
    assert run.data.metrics["parity_max_abs_diff"] < 1e-3  # the folder's model really was exported
