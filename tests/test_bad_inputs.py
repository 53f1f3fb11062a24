"""Bad input across the tool (docs/bad-inputs.md): each wrong input gets a clear message naming the
key or file, a non-zero exit and no traceback, and nothing already recorded is lost.

The CLI tests share one launch directory (``lab``) whose MLflow store already holds a FINISHED
``task=bench runtime=acl`` run (tiny_qwen exported, compiled by the stand-in atc, measured on the
pyACL simulator); every bad run afterwards must leave that run, and every other, as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_BANDWIDTH, all_runs, cli_env, run_cli_in, stand_in_env

from ascend_lab import graph_contract as gc
from ascend_lab.cli import command_line_overrides, override_problem
from ascend_lab.errors import AscendLabError
from ascend_lab.provenance import digest_mismatch
from ascend_lab.writable import folder_problem

FAST = ("benchmark.warmup=1", "benchmark.iterations=2", "benchmark.min_duration_s=0", SMALL_BANDWIDTH)
ACL = ("task=bench", "runtime=acl", *FAST)


def acl_env() -> dict[str, str]:
    return stand_in_env(ASCEND_LAB_SIM_CHIP="Ascend910B3")


def cli(cwd: Path, *overrides: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli_in(cwd, *overrides, env=env, timeout=timeout)


def assert_clear_failure(proc: subprocess.CompletedProcess, *named: str) -> str:
    """Non-zero exit, no traceback, and the message names each of ``named``; returns stderr."""
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    for text in named:
        assert text in proc.stderr, f"{text!r} not in:\n{proc.stderr}"
    return proc.stderr


def statuses(launch: Path) -> dict[str, str]:
    _, runs = all_runs(launch)
    return {run.info.run_id: run.info.status for run in runs}


def assert_kept(before: dict[str, str], launch: Path, new: int = 0) -> list[str]:
    """Every earlier run is still there with its status; returns the ids of the ``new`` runs added."""
    after = statuses(launch)
    assert {run_id: after.get(run_id) for run_id in before} == before
    added = [run_id for run_id in after if run_id not in before]
    assert len(added) == new, added
    return added


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    launch = tmp_path_factory.mktemp("lab")
    proc = cli(launch, *ACL, env=acl_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(statuses(launch).values()) == ["FINISHED"]
    return launch


def cached_files(lab: Path) -> tuple[Path, Path]:
    """The lab's exported model.onnx and its compiled .om (the batch-1 static one)."""
    (onnx_file,) = lab.glob("outputs/export_cache/tiny_qwen-kv_cache-*/model.onnx")
    (om,) = lab.glob("outputs/om/tiny_qwen_kv_cache_Ascend910B3_*/*.om")
    return onnx_file, om


@pytest.mark.slow
def test_the_acl_run_names_the_npu_that_runs_it(lab):
    """runtime=acl runs the .om on the NPU through pyACL: the device line and tag name it, not torch's CPU."""
    _, runs = all_runs(lab)
    first = min(runs, key=lambda run: run.info.start_time)
    tags = first.data.tags
    assert tags["device"] == "npu:0", tags["device"]
    assert tags["device.reason"].startswith("runtime=acl runs the .om on NPU 0 with pyACL; torch's own work stays on cpu")
    log_text = "".join(p.read_text() for p in lab.glob("outputs/runs/*/*/*.log"))
    assert "device: npu:0 (runtime=acl runs the .om on NPU 0" in log_text


# ------------------------------------------------------------------------------------------------
# Malformed overrides, out-of-range numbers: rejected before any run is opened


MALFORMED = [
    ("benchmark.batch_size", "Invalid override 'benchmark.batch_size': missing EQUAL"),
    ("=4", "Invalid override '=4': no key before '='"),
    ("+=4", "Invalid override '+=4'"),
    ("atc.dynamic_dims=[1,2", "Invalid override 'atc.dynamic_dims=[1,2'"),
    ("benchmark.prompt='abc", "Invalid override \"benchmark.prompt='abc\""),
    ("benchmark.batch_size=${oops}", "benchmark.batch_size: Interpolation key 'oops' not found"),
    ("benchmark.batch_size=???", "benchmark.batch_size: Structured config"),
    ("+benchmark.batchsize=4", "benchmark.batchsize=4: no such key (did you mean benchmark.batch_size?)"),
    ("+foo=1", "Invalid config: foo=1: no such key"),
]


@pytest.mark.slow
@pytest.mark.parametrize("override,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_override(lab, override, message):
    before = statuses(lab)
    assert_clear_failure(cli(lab, "task=bench", override), message)
    assert_kept(before, lab)


@pytest.mark.slow
def test_grammar_characters_under_multirun_print_the_form_to_copy(lab):
    """In a single run such a value is quoted for the user (tests/test_chinese_cli.py); under -m its commas
    may separate sweep values, so it is refused with both quoted forms."""
    before = statuses(lab)
    proc = cli(lab, "-m", "task=bench", "atc.input_shape=input_ids:1,16;attention_mask:1,16")
    assert_clear_failure(proc, "Invalid override 'atc.input_shape=input_ids:1,16;attention_mask:1,16'",
                         "As one string: 'atc.input_shape=\"input_ids:1,16;attention_mask:1,16\"'")
    assert_kept(before, lab)


OUT_OF_RANGE = [
    (("benchmark.batch_size=0",), "benchmark.batch_size=0: must be > 0"),
    (("mnist.epochs=-1",), "mnist.epochs=-1: must be > 0"),
    (("export.opset=99",), "export.opset=99: must be an ONNX opset between 7 and 23"),
    (("atc.timeout_s=0",), "atc.timeout_s=0.0: must be > 0"),
    (("seed=-1",), "seed=-1: must be between 0 and 4294967295"),
    (("benchmark.min_duration_s=inf",), "benchmark.min_duration_s=inf: must be a finite number"),
    (("benchmark.scenario=forward", "benchmark.seq_len=600"),
     "benchmark.seq_len=600: benchmark.seq_len = 600 positions, more than model.max_position_embeddings=512"),
    (("benchmark.scenario=generate", "benchmark.seq_len=500"),
     "benchmark.seq_len + benchmark.new_tokens = 532 positions, more than model.max_position_embeddings=512"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", OUT_OF_RANGE, ids=[" ".join(o[0]) for o in OUT_OF_RANGE])
def test_out_of_range_number(lab, overrides, message):
    before = statuses(lab)
    assert_clear_failure(cli(lab, "task=bench", *overrides), message)
    assert_kept(before, lab)


@pytest.mark.slow
def test_batch_beyond_host_memory_fails_before_any_work(lab):
    before = statuses(lab)
    proc = cli(lab, "task=bench", "runtime=onnxruntime", "benchmark.batch_size=1000000000000")
    assert_clear_failure(proc, "benchmark.batch_size=1000000000000", "more than this host's")
    (failed,) = assert_kept(before, lab, new=1)
    client, _ = all_runs(lab)
    run = client.get_run(failed)
    assert run.info.status == "FAILED" and "benchmark.batch_size" in run.data.tags["error"]
    assert "onnx_sha256" not in run.data.tags  # nothing was exported or measured


# ------------------------------------------------------------------------------------------------
# Models that cannot be had


@pytest.mark.slow
def test_model_id_that_cannot_be_fetched_offline(lab):
    env = cli_env()
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    env["MODELSCOPE_DOMAIN"] = "127.0.0.1:9"  # a closed port: offline here and on a networked CI alike
    before = statuses(lab)
    proc = cli(lab, "task=export", "model=qwen2_5_0_5b_instruct", env=env, timeout=120)
    assert_clear_failure(proc, "could not fetch model.model_id=qwen/Qwen2.5-0.5B-Instruct", "model.path=<folder>")
    (failed,) = assert_kept(before, lab, new=1)
    client, _ = all_runs(lab)
    assert client.get_run(failed).info.status == "FAILED"


# ------------------------------------------------------------------------------------------------
# Corrupt or truncated ONNX and .om files


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_truncated_cache_entries_are_detected_and_rebuilt(lab):
    """A truncated model.onnx and .om no longer match the sha256 recorded beside them: both are
    rebuilt, with a warning naming the file, and the rebuilt files are the recorded ones again."""
    onnx_file, om = cached_files(lab)
    recorded = (json.loads((onnx_file.parent / "meta.json").read_text())["sha256"],
                json.loads((om.parent / "meta.json").read_text())["sha256"])
    assert (sha256(onnx_file), sha256(om)) == recorded
    truncate(onnx_file)
    truncate(om)
    before = statuses(lab)
    proc = cli(lab, *ACL, env=acl_env())
    output = proc.stdout + proc.stderr  # Hydra's log lines go to stdout
    assert proc.returncode == 0, output
    assert f"WARNING] - cache entry {onnx_file.parent} is damaged ({onnx_file} changed" in output
    assert f"WARNING] - cache entry {om.parent} is damaged ({om} changed" in output
    assert (sha256(onnx_file), sha256(om)) == recorded
    (new,) = assert_kept(before, lab, new=1)
    client, _ = all_runs(lab)
    run = client.get_run(new)
    assert run.info.status == "FINISHED" and str(onnx_file) in run.data.tags["export_cache_damaged"]
    assert run.data.tags["onnx_sha256"] == recorded[0] and run.data.tags["om_sha256"] == recorded[1]


@pytest.mark.slow
def test_corrupt_om_the_cache_cannot_see_fails_at_load_naming_the_file(lab):
    """Damage that keeps the size and the mtime (bit rot, a copy with -p) reaches pyACL's load."""
    _, om = cached_files(lab)
    original, stat = om.read_bytes(), om.stat()
    om.write_bytes(b"X" * 32 + original[32:])
    os.utime(om, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    before = statuses(lab)
    try:
        proc = cli(lab, *ACL, env=acl_env())
    finally:
        om.write_bytes(original)
        os.utime(om, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert_clear_failure(proc, f"Could not load {om}", "corrupt or truncated (delete it")
    (failed,) = assert_kept(before, lab, new=1)
    client, _ = all_runs(lab)
    assert client.get_run(failed).info.status == "FAILED"


@pytest.mark.slow
def test_om_compiled_for_another_soc(lab):
    before = statuses(lab)
    proc = cli(lab, *ACL, "atc.soc_version=Ascend310P3", env=acl_env())
    stderr = assert_clear_failure(proc, "acl.mdl.load_from_file failed", "atc.soc_version must be the `npu-smi info` "
                                  "Name prefixed with Ascend")
    assert "outputs/om/tiny_qwen_kv_cache_Ascend310P3_" in stderr  # the file is named
    assert_kept(before, lab, new=1)


@pytest.mark.slow
def test_a_batch_the_om_was_not_compiled_for(lab):
    """An .om compiled by hand (an explicit atc.input_shape) for batch 1, measured at batch 4."""
    shape = "input_ids:1,-1;position_ids:1,-1;past_length:1;pad_lengths:1;past_key_values:1024,1,4,2,16"
    before = statuses(lab)
    proc = cli(lab, *ACL, f'atc.input_shape="{shape}"', "atc.dynamic_mode=dynamic_dims",
               'atc.dynamic_dims=["1,1","16,16"]', "benchmark.batch_size=4", env=acl_env())
    assert_clear_failure(proc, "Invalid config: benchmark.batch_size=4: tiny_qwen_kv_cache_linux_x86_64.om was "
                               "compiled for batch 1")
    assert_kept(before, lab, new=1)


# ------------------------------------------------------------------------------------------------
# Where results go


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "multirun"])
def test_outputs_that_is_a_file(tmp_path, multirun):
    (tmp_path / "outputs").write_text("my notes\n")
    proc = cli(tmp_path, *(["-m"] if multirun else []), "task=doctor", "doctor.matmul_size=64")
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    assert_clear_failure(proc, f"Cannot write {key}=outputs/", f"{tmp_path / 'outputs'} is a file, not a folder")
    assert (tmp_path / "outputs").read_text() == "my notes\n"


@pytest.mark.slow
def test_cache_folder_under_a_file(lab):
    (lab / "afile").write_text("keep me\n")
    before = statuses(lab)
    proc = cli(lab, "task=export", f"export.cache_dir={lab / 'afile' / 'cache'}")
    assert_clear_failure(proc, f"Cannot write export.cache_dir={lab / 'afile' / 'cache'}",
                         f"{lab / 'afile'} is a file")
    assert_kept(before, lab)  # checked before the run opens
    assert (lab / "afile").read_text() == "keep me\n"


@pytest.mark.slow
@pytest.mark.parametrize("uri,message", [
    ("notauri", "tracking.uri='notauri': not a tracking URI"),
    ("localhost:5000", "tracking.uri='localhost:5000': not a tracking URI"),
    ("sqlite://", "tracking.uri='sqlite://': a SQLite store needs a file"),
    ("file:./mlruns", "tracking.uri='file:./mlruns': MLflow 3 refuses file stores"),
], ids=["notauri", "localhost:5000", "sqlite in-memory", "file store"])
def test_tracking_uri_that_is_not_a_uri(lab, uri, message):
    env = cli_env()
    env.pop("MLFLOW_ALLOW_FILE_STORE", None)
    before = statuses(lab)
    assert_clear_failure(cli(lab, "task=doctor", f"tracking.uri={uri}", env=env), message)
    assert_kept(before, lab)


@pytest.mark.slow
def test_tracking_store_that_is_not_a_database(lab):
    junk = lab / "notes.db"
    junk.write_text("not a database\n")
    proc = cli(lab, "task=doctor", f"tracking.uri=sqlite:///{junk}")
    assert_clear_failure(proc, f"cannot open the MLflow store tracking.uri=sqlite:///{junk}", "file is not a database")
    assert junk.read_text() == "not a database\n"


# ------------------------------------------------------------------------------------------------
# The pieces, in-process


@pytest.mark.parametrize("argv,bad", [
    (["task=bench", "=4"], "'=4'"),
    (["-m", "task=bench", "atc.dynamic_dims=[1,2"], "'atc.dynamic_dims=[1,2'"),
    (["task=bench", "benchmark.batch_size"], "'benchmark.batch_size'"),
])
def test_override_problem_names_the_override(argv, bad):
    assert f"Invalid override {bad}" in override_problem(argv)


def test_flag_values_are_not_overrides():
    argv = ["-cd", "=odd dir", "--info", "config", "-m", "task=bench", "benchmark.batch_size=1,4,8"]
    assert command_line_overrides(argv) == ["task=bench", "benchmark.batch_size=1,4,8"]
    assert override_problem(argv) is None


def test_sequence_check_uses_the_preset_and_leaves_local_checkpoints_to_their_config():
    from ascend_lab.config import ModelConfig, check_sequence_fits
    from ascend_lab.errors import ConfigError

    check_sequence_fits(ModelConfig(), 512, "benchmark.seq_len", 512, "benchmark.seq_len")
    with pytest.raises(ConfigError, match=r"benchmark.new_tokens=500: the prompt's 13 tokens \+ benchmark.new_tokens"
                                          r" = 513 positions, more than model.max_position_embeddings=512"):
        check_sequence_fits(ModelConfig(), 513, "benchmark.new_tokens", 500,
                            "the prompt's 13 tokens + benchmark.new_tokens")
    check_sequence_fits(ModelConfig(weights="pretrained", path="/ckpt"), 10**6, "benchmark.seq_len", 10**6, "x")


def test_folder_problem(tmp_path):
    (tmp_path / "file").write_text("x")
    assert folder_problem(tmp_path / "new" / "deeper") is None
    assert folder_problem(tmp_path / "file" / "sub") == f"{tmp_path / 'file'} is a file, not a folder"


def test_digest_mismatch_rehashes_only_files_changed_after_the_record(tmp_path, monkeypatch):
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 100)
    digest = sha256(model)
    record = tmp_path / "meta.json"
    record.write_text("{}")
    stamp = record.stat().st_mtime_ns
    os.utime(model, ns=(stamp, stamp - 1_000_000))  # written before its record, as the caches do

    from ascend_lab import provenance

    monkeypatch.setattr(provenance, "sha256_files", lambda files: pytest.fail("hashed an untouched file"))
    assert digest_mismatch([model], record, digest) is None
    monkeypatch.undo()
    model.write_bytes(b"weights" * 50)
    assert "changed after meta.json was written" in digest_mismatch([model], record, digest)
    model.write_bytes(b"weights" * 100)  # touched, same content: still good
    assert digest_mismatch([model], record, digest) is None
    model.unlink()
    assert digest_mismatch([model], record, digest) == "model.bin missing"


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    """input_ids, attention_mask: int64 [batch, seq] → hidden float32 [batch, seq, 8]."""
    import torch

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(16, 8)

        def forward(self, input_ids, attention_mask):
            return self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)

    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    example = (torch.zeros(2, 4, dtype=torch.int64), torch.ones(2, 4, dtype=torch.int64))
    torch.onnx.export(Small().eval(), example, str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["hidden"], dynamo=False,
                      dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    return path


# What the small graph above is, in the project's terms (a hidden-states graph, width 8).
HIDDEN = gc.GraphContract("hidden_states", gc.ModelDims(1, 1, 1, 8, 8, 50), "float32")


def ids(shape, dtype=np.int64):
    return np.zeros(shape, dtype=dtype)


@pytest.mark.parametrize("feeds,message", [
    ({"input_ids": ids((2, 4), np.int32), "attention_mask": ids((2, 4))},
     "input 'input_ids': expected dtype int64, got int32 (cast it, e.g. .astype(np.int64))"),
    ({"input_ids": ids((2, 4, 1)), "attention_mask": ids((2, 4))},
     "input 'input_ids': expected rank 2 ('batch', 'seq'), got shape (2, 4, 1)"),
    ({"input_ids": ids((2, 4))}, "the graph takes inputs ['input_ids', 'attention_mask']; missing ['attention_mask']"),
    ({"input_ids": ids((2, 4)), "attention_mask": ids((3, 4))},
     "inputs 'input_ids' and 'attention_mask' disagree on dim 'batch': 2 vs 3"),
], ids=["dtype", "rank", "missing", "batch"])
def test_onnxruntime_names_the_input_that_does_not_match(small_onnx, feeds, message):
    from ascend_lab.runtimes.onnxruntime.runtime import FeedError, OnnxRuntime

    with OnnxRuntime(small_onnx, HIDDEN) as runtime:
        with pytest.raises(FeedError) as caught:
            runtime.run(feeds)
        assert message in str(caught.value)
        good = runtime.run({"input_ids": ids((2, 4)), "attention_mask": np.ones((2, 4), np.int64)})
        assert good["hidden"].shape == (2, 4, 8)


def test_onnxruntime_refuses_a_truncated_file_naming_it(small_onnx, tmp_path):
    from ascend_lab.runtimes.onnxruntime.runtime import OnnxRuntime

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(small_onnx.read_bytes()[:200])
    with pytest.raises(AscendLabError, match=f"onnxruntime cannot load {broken}: .*missing, truncated"):
        OnnxRuntime(broken, HIDDEN)
