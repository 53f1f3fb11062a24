"""ATC: the pure shape derivation and command builder, the stand-in `atc` agreeing with them, the
subprocess path (success, failures, timeout, missing toolkit, set_env.sh) and the compile cache,
recorded in a real MLflow store; then task=compile through the real CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ascend_lab import atc
from ascend_lab.config import validate
from ascend_lab.config.atc import SOC_VERSIONS, AtcConfig
from ascend_lab.config.benchmark import BenchmarkConfig
from ascend_lab.errors import ConfigError, ToolchainError

FAKES = Path(__file__).resolve().parent / "fakes"
FAKE_BIN = FAKES / "bin"
sys.path.insert(0, str(FAKES))
from om_format import read_om  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Toy graphs with the exporters' I/O conventions (hidden_states; kv_cache with past/total dims)


def _write_onnx(path: Path, inputs, outputs, nodes, initializers=()) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "toy", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def hidden_states_onnx(path: Path, unnamed_dims: bool = False) -> Path:
    """input_ids, attention_mask [batch, seq] int64 → hidden_states [batch, seq, 8]."""
    from onnx import TensorProto as T
    from onnx import helper

    batch, seq = (None, None) if unnamed_dims else ("batch", "seq")
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=T.FLOAT),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=T.FLOAT),
             helper.make_node("Mul", ["f", "m"], ["fm"]),
             helper.make_node("Unsqueeze", ["fm", "axis"], ["u"]),
             helper.make_node("Mul", ["u", "w"], ["hidden_states"])]
    return _write_onnx(
        path,
        [helper.make_tensor_value_info("input_ids", T.INT64, [batch, seq]),
         helper.make_tensor_value_info("attention_mask", T.INT64, [batch, seq])],
        [helper.make_tensor_value_info("hidden_states", T.FLOAT, [batch, seq, 8])],
        nodes,
        [helper.make_tensor("axis", T.INT64, [1], [2]), helper.make_tensor("w", T.FLOAT, [8], [float(i) for i in range(8)])],
    )


def kv_cache_onnx(path: Path, layers: int = 2, kv_heads: int = 2, head_dim: int = 4) -> Path:
    """The kv_cache convention: input_ids [batch, seq], attention_mask [batch, total_seq], past
    keys/values [batch, kv, past_seq, d] → logits [batch, seq, 10], presents [batch, kv, total_seq, d]."""
    from onnx import TensorProto as T
    from onnx import helper

    inputs = [helper.make_tensor_value_info("input_ids", T.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", T.INT64, ["batch", "total_seq"])]
    outputs = [helper.make_tensor_value_info("logits", T.FLOAT, ["batch", "seq", 10])]
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=T.FLOAT),
             helper.make_node("Unsqueeze", ["f", "axis"], ["u"]),
             helper.make_node("Mul", ["u", "w"], ["logits"])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", T.FLOAT,
                                                        ["batch", kv_heads, "past_seq", head_dim]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", T.FLOAT,
                                                         ["batch", kv_heads, "total_seq", head_dim]))
            nodes.append(helper.make_node("Identity", [f"past_key_values.{i}.{kind}"], [f"present.{i}.{kind}"]))
    return _write_onnx(path, inputs, outputs, nodes,
                       [helper.make_tensor("axis", T.INT64, [1], [2]),
                        helper.make_tensor("w", T.FLOAT, [10], [float(i) for i in range(10)])])


HS_INPUTS = [atc.GraphInput("input_ids", ("batch", "seq"), "int64"),
             atc.GraphInput("attention_mask", ("batch", "seq"), "int64")]
KV_INPUTS = [atc.GraphInput("input_ids", ("batch", "seq"), "int64"),
             atc.GraphInput("attention_mask", ("batch", "total_seq"), "int64"),
             atc.GraphInput("past_key_values.0.key", ("batch", 2, "past_seq", 4), "float32"),
             atc.GraphInput("past_key_values.0.value", ("batch", 2, "past_seq", 4), "float32")]


def shapes_for(inputs, bench: BenchmarkConfig | None = None, **atc_fields):
    cfg = AtcConfig(**atc_fields)
    return cfg, atc.derive_input_shapes(inputs, cfg, bench or BenchmarkConfig())


def flags(argv: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)


# ---------------------------------------------------------------------------------------------
# Pure: shapes and command lines


def test_walkthrough_command_hidden_states_static():
    cfg, shapes = shapes_for(HS_INPUTS, soc_version="Ascend310", log="info")
    argv = atc.build_atc_command(cfg, "/m/qwen.onnx", shapes, "/out/qwen")
    assert argv == ["atc", "--framework=5", "--model=/m/qwen.onnx", "--output=/out/qwen", "--soc_version=Ascend310",
                    "--input_format=ND", "--input_shape=input_ids:1,16;attention_mask:1,16", "--log=info"]


def test_static_sizes_follow_benchmark_and_past_seq_len():
    _, shapes = shapes_for(KV_INPUTS, BenchmarkConfig(batch_size=2, seq_len=8))
    assert shapes.input_shape == ("input_ids:2,8;attention_mask:2,16;"
                                  "past_key_values.0.key:2,2,8,4;past_key_values.0.value:2,2,8,4")
    _, shapes = shapes_for(KV_INPUTS, BenchmarkConfig(batch_size=2, seq_len=8), past_seq_len=24)
    assert shapes.dims["attention_mask"] == ["2", "32"] and shapes.dims["past_key_values.0.key"] == ["2", "2", "24", "4"]
    assert shapes.batch_gears is None and shapes.dims_gears is None


def test_dynamic_batch_size_defaults_to_benchmark_batch_sizes():
    cfg, shapes = shapes_for(KV_INPUTS, BenchmarkConfig(batch_sizes=[1, 2, 8]), dynamic_mode="dynamic_batch_size")
    assert shapes.input_shape == ("input_ids:-1,16;attention_mask:-1,32;"
                                  "past_key_values.0.key:-1,2,16,4;past_key_values.0.value:-1,2,16,4")
    f = flags(atc.build_atc_command(cfg, "m.onnx", shapes, "o"))
    assert f["dynamic_batch_size"] == "1,2,8" and "dynamic_dims" not in f
    cfg, shapes = shapes_for(HS_INPUTS, dynamic_mode="dynamic_batch_size", dynamic_batch_sizes=[2, 16])
    assert flags(atc.build_atc_command(cfg, "m.onnx", shapes, "o"))["dynamic_batch_size"] == "2,16"


def test_dynamic_batch_size_needs_more_than_one_gear():
    with pytest.raises(ConfigError, match="benchmark.batch_sizes.*2 to 100"):
        shapes_for(HS_INPUTS, BenchmarkConfig(batch_sizes=[4]), dynamic_mode="dynamic_batch_size")
    with pytest.raises(ConfigError, match="atc.dynamic_batch_sizes"):
        AtcConfig(dynamic_mode="dynamic_batch_size", dynamic_batch_sizes=list(range(1, 102)))


def test_dynamic_dims_gears_per_dim_name_and_per_minus_one():
    cfg, shapes = shapes_for(HS_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,16", "4,32"])
    argv = atc.build_atc_command(cfg, "m.onnx", shapes, "o")
    f = flags(argv)
    assert f["input_shape"] == "input_ids:-1,-1;attention_mask:-1,-1"
    assert f["dynamic_dims"] == "1,16,1,16;4,32,4,32" and "dynamic_batch_size" not in f
    # ATC's own form: one value per -1, passed as given.
    cfg, shapes = shapes_for(HS_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,16,1,16", "2,8,2,8"])
    assert shapes.dims_gears == [[1, 16, 1, 16], [2, 8, 2, 8]]
    # kv_cache: total_seq follows seq (past fixed at past_seq_len=4).
    cfg, shapes = shapes_for(KV_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,1", "1,16"], past_seq_len=4)
    assert shapes.input_shape == ("input_ids:-1,-1;attention_mask:-1,-1;"
                                  "past_key_values.0.key:-1,2,4,4;past_key_values.0.value:-1,2,4,4")
    assert shapes.dims_gears == [[1, 1, 1, 5, 1, 1], [1, 16, 1, 20, 1, 1]]


def test_dynamic_dims_wrong_arity_names_the_expected_order():
    with pytest.raises(ConfigError, match=r"needs 2 values .* or 4 \(one per -1: input_ids\[0\]\(batch\)"):
        shapes_for(HS_INPUTS, dynamic_mode="dynamic_dims", dynamic_dims=["1,2,3", "4,5,6"])


def test_shape_range_uses_ranges_and_no_gears():
    cfg, shapes = shapes_for(KV_INPUTS, BenchmarkConfig(batch_sizes=[1, 4]), dynamic_mode="shape_range",
                             soc_version="Ascend910B", max_seq_len=64, past_seq_len=32)
    assert shapes.input_shape == ("input_ids:1~4,1~64;attention_mask:1~4,1~96;"
                                  "past_key_values.0.key:1~4,2,0~32,4;past_key_values.0.value:1~4,2,0~32,4")
    argv = atc.build_atc_command(cfg, "m.onnx", shapes, "o")
    assert not any(a.startswith(("--dynamic_batch_size", "--dynamic_dims", "--input_shape_range")) for a in argv)


@pytest.mark.parametrize("soc", ["Ascend310", "Ascend310B1"])
def test_shape_range_rejected_on_310(soc):
    with pytest.raises(ConfigError, match=f"not supported on {soc}"):
        AtcConfig(dynamic_mode="shape_range", soc_version=soc)


def test_precision_implmode_and_extra_args_flags():
    cfg, shapes = shapes_for(HS_INPUTS, precision_mode="must_keep_origin_dtype", op_select_implmode="high_precision",
                             extra_args=["--optypelist_for_implmode=Pooling,SoftmaxV2", "--out_nodes", "Mul_4:0"])
    argv = atc.build_atc_command(cfg, "m.onnx", shapes, "o")
    assert argv[-4:] == ["--log=error", "--optypelist_for_implmode=Pooling,SoftmaxV2", "--out_nodes", "Mul_4:0"]
    f = flags(argv)
    assert f["precision_mode"] == "must_keep_origin_dtype" and f["op_select_implmode"] == "high_precision"
    assert "precision_mode_v2" not in f
    cfg, shapes = shapes_for(HS_INPUTS, precision_mode_v2="mixed_float16")
    f = flags(atc.build_atc_command(cfg, "m.onnx", shapes, "o"))
    assert f["precision_mode_v2"] == "mixed_float16" and "precision_mode" not in f and "op_select_implmode" not in f


@pytest.mark.parametrize("fields,key,text", [
    ({"precision_mode": "force_fp16", "precision_mode_v2": "fp16"}, "atc.precision_mode_v2", "cannot be combined"),
    ({"dynamic_mode": "dynamic_dims"}, "atc.dynamic_dims", "needs gears"),
    ({"dynamic_mode": "dynamic_dims", "dynamic_dims": ["1,16"]}, "atc.dynamic_dims", "2 to 100"),
    ({"dynamic_mode": "dynamic_dims", "dynamic_dims": ["1,16", "2,16"], "input_format": "NCHW"},
     "atc.input_format", "ND"),
    ({"dynamic_batch_sizes": [1, 4]}, "atc.dynamic_batch_sizes", "only applies to atc.dynamic_mode=dynamic_batch_size"),
    ({"dynamic_mode": "dynamic_batch_size", "dynamic_dims": ["1,16", "2,16"]}, "atc.dynamic_dims", "only applies"),
    ({"extra_args": ["--dynamic_batch_size=1,2"]}, "atc.extra_args", "use atc.\\* keys"),
    ({"extra_args": ["-soc-version=Ascend310"]}, "atc.extra_args", "sets --soc_version"),
    ({"extra_args": ["Pooling"]}, "atc.extra_args", "not a flag"),
    ({"input_shape": "input_ids 1,16"}, "atc.input_shape", "name:d,d"),
    ({"soc_version": "Ascend910X"}, "atc.soc_version", "Ascend910B3"),
])
def test_invalid_combinations(fields, key, text):
    with pytest.raises(ConfigError, match=text) as info:
        AtcConfig(**fields)
    assert info.value.key == key


def test_invalid_soc_lists_every_valid_name():
    with pytest.raises(ConfigError) as info:
        AtcConfig(soc_version="Ascend999")
    assert all(name in str(info.value) for name in SOC_VERSIONS)


def test_explicit_input_shape_is_checked_against_the_graph():
    _, shapes = shapes_for(HS_INPUTS, input_shape="input_ids:1,16;attention_mask:1,16")
    assert shapes.input_shape == "input_ids:1,16;attention_mask:1,16"
    with pytest.raises(ConfigError, match="'input_idz' is not a graph input; inputs are input_ids, attention_mask"):
        shapes_for(HS_INPUTS, input_shape="input_idz:1,16;attention_mask:1,16")
    with pytest.raises(ConfigError, match="input_ids has 2 dims in the graph, not 3"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,16,1;attention_mask:1,16")
    with pytest.raises(ConfigError, match="'attention_mask' has dynamic dims and needs a shape"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,16")
    with pytest.raises(ConfigError, match="need a dynamic atc.dynamic_mode"):
        shapes_for(HS_INPUTS, input_shape="input_ids:-1,16;attention_mask:-1,16")
    with pytest.raises(ConfigError, match="only in the batch dim"):
        shapes_for(HS_INPUTS, input_shape="input_ids:1,-1;attention_mask:1,-1", dynamic_mode="dynamic_batch_size")
    _, shapes = shapes_for(HS_INPUTS, input_shape="input_ids:1,-1;attention_mask:1,-1", dynamic_mode="dynamic_dims",
                           dynamic_dims=["8,8", "16,16"])
    assert shapes.dims_gears == [[8, 8], [16, 16]]


def test_unknown_symbolic_dim_suggests_an_explicit_shape():
    with pytest.raises(ConfigError, match=r"dim 1 \('s77'\).*atc.input_shape='x:N,N,3'"):
        shapes_for([atc.GraphInput("x", ("batch", "s77", 3))])


def test_graph_inputs_read_from_onnx(tmp_path):
    kv = atc.read_graph_inputs(kv_cache_onnx(tmp_path / "kv.onnx", layers=1))
    assert kv == KV_INPUTS
    # Unnamed dynamic dims take their names from the exporter's dynamic_axes (keys may be JSON strings).
    hs = atc.read_graph_inputs(hidden_states_onnx(tmp_path / "hs.onnx", unnamed_dims=True),
                               {"input_ids": {"0": "batch", "1": "seq"}, "attention_mask": {0: "batch", 1: "seq"}})
    assert hs == HS_INPUTS


def test_cache_key_ignores_paths_and_log_level_only():
    base = ["atc", "--framework=5", "--model=/a.onnx", "--output=/x/m", "--soc_version=Ascend910B", "--log=error"]
    key = atc.cache_key("abc", base, "8.0.RC3")
    assert key == atc.cache_key("abc", [*base[:2], "--model=/b.onnx", "--output=/y/m", base[4], "--log=debug"], "8.0.RC3")
    assert key != atc.cache_key("abd", base, "8.0.RC3")
    assert key != atc.cache_key("abc", [*base[:4], "--soc_version=Ascend310", base[5]], "8.0.RC3")
    assert key != atc.cache_key("abc", base, "8.1.RC1")


# ---------------------------------------------------------------------------------------------
# The stand-in atc accepts exactly what the builder produces, and rejects what ATC rejects


def run_fake(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(FAKE_BIN / "atc"), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("graph,fields,dynamic", [
    ("hs", {"soc_version": "Ascend310"}, None),
    ("kv", {}, None),
    ("kv", {"dynamic_mode": "dynamic_batch_size"}, {"kind": "batch", "gears": [1, 4, 8]}),
    ("kv", {"dynamic_mode": "dynamic_dims", "dynamic_dims": ["1,1", "2,16"], "past_seq_len": 4},
     {"kind": "dims", "gears": [[1, 1, 1, 5, 1, 1], [2, 16, 2, 20, 2, 2]]}),
    ("kv", {"dynamic_mode": "shape_range", "soc_version": "Ascend910B", "precision_mode_v2": "origin"}, None),
])
def test_fake_atc_accepts_built_commands(tmp_path, graph, fields, dynamic):
    onnx_path = hidden_states_onnx(tmp_path / "m.onnx") if graph == "hs" else kv_cache_onnx(tmp_path / "m.onnx", 1)
    cfg = AtcConfig(**fields)
    shapes = atc.derive_input_shapes(atc.read_graph_inputs(onnx_path), cfg, BenchmarkConfig())
    argv = atc.build_atc_command(cfg, onnx_path, shapes, tmp_path / "out")
    result = run_fake(*argv[1:])
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0] == "ATC start working now, please wait for a moment."
    assert atc.SUCCESS_LINE in result.stdout
    om = atc.find_om(tmp_path / "out")
    assert om == tmp_path / "out_linux_x86_64.om"
    header, onnx_bytes = read_om(om)
    assert onnx_bytes == onnx_path.read_bytes()
    assert header["soc_version"] == cfg.soc_version and header["input_format"] == "ND"
    assert header["dynamic"] == dynamic
    assert [i["name"] for i in header["inputs"]] == list(shapes.dims)
    for item in header["inputs"]:
        expected = [-1 if t == "-1" or "~" in t else int(t) for t in shapes.dims[item["name"]]]
        assert item["dims"] == expected
    assert header["inputs"][0]["dtype"] == "int64"
    if graph == "hs" and dynamic is None:
        assert header["outputs"] == [{"name": "hidden_states", "dtype": "float32", "dims": [1, 16, 8]}]


@pytest.mark.parametrize("args,code,text", [
    (["--framework=3"], "E10001", "--framework"),
    (["--soc_version=Ascend999"], "E10001", "--soc_version"),
    (["--input_shape=input_ids:1,16,2;attention_mask:1,16"], "E10001", "3 dims for [input_ids]"),
    (["--input_shape=ids:1,16;attention_mask:1,16"], "E10001", "Input [ids]"),
    (["--input_shape=input_ids:-1,16;attention_mask:-1,16"], "E10001", "-1 in --input_shape needs"),
    (["--input_shape=input_ids:-1,16;attention_mask:-1,16", "--dynamic_batch_size=1,2",
      "--dynamic_dims=1;2"], "E10001", "cannot be used together"),
    (["--input_shape=input_ids:1,-1;attention_mask:1,-1", "--input_format=ND", "--dynamic_dims=8;16"],
     "E10001", "has 1 values; --input_shape has 2"),
    (["--input_shape=input_ids:1,-1;attention_mask:1,-1", "--dynamic_batch_size=1,2"], "E10001", "batch dim"),
    (["--precision_mode=force_fp16", "--precision_mode_v2=fp16"], "E10001", "cannot be used together"),
    (["--precision_mode=fastest"], "E10001", "--precision_mode"),
    (["--input_format=NHWC"], "E10001", "--input_format"),
    (["--log=verbose"], "E10001", "--log"),
    (["--soc_version=Ascend310B1", "--input_shape=input_ids:1~4,16;attention_mask:1~4,16"], "E10001", "not supported"),
    (["--input_shape=input_ids:0,16;attention_mask:0,16"], "E10001", "Static dim 0"),
    (["--bogus=1"], "E10003", "Unknown parameter"),
])
def test_fake_atc_rejects_what_atc_rejects(tmp_path, args, code, text):
    onnx_path = hidden_states_onnx(tmp_path / "m.onnx")
    base = {"framework": "5", "model": str(onnx_path), "output": str(tmp_path / "o"), "soc_version": "Ascend910B",
            "input_shape": "input_ids:1,16;attention_mask:1,16"}
    for arg in args:
        base[arg[2:].split("=", 1)[0]] = arg.split("=", 1)[1]
    result = run_fake(*(f"--{k}={v}" for k, v in base.items()))
    assert result.returncode == 1
    assert "ATC run failed, Please check the detail log" in result.stdout
    assert f"{code}:" in result.stdout and text in result.stdout
    assert not list(tmp_path.glob("o*.om"))


def test_fake_atc_flag_forms(tmp_path):
    onnx_path = hidden_states_onnx(tmp_path / "m.onnx")
    result = run_fake("-framework", "5", "--model", str(onnx_path), f"--output={tmp_path / 'o'}",
                      "--soc-version=Ascend910B2", "--input_shape", "input_ids:1,4;attention_mask:1,4")
    assert result.returncode == 0, result.stdout
    assert read_om(tmp_path / "o_linux_x86_64.om")[0]["soc_version"] == "Ascend910B2"
    missing = run_fake("--framework=5", f"--model={tmp_path / 'nope.onnx'}", f"--output={tmp_path / 'o'}",
                       "--soc_version=Ascend910B")
    assert missing.returncode == 1 and "E19000" in missing.stdout


# ---------------------------------------------------------------------------------------------
# The subprocess path, the cache and the MLflow record (in-process, real store)


@dataclass
class ToyExported:
    """The fields of ascend_lab.export.ExportedModel that compiling reads."""

    onnx_path: Path
    sha256: str
    graph: str
    dynamic_axes: dict = field(default_factory=dict)


def toy_exported(path: Path, graph: str = "hidden_states") -> ToyExported:
    onnx_path = hidden_states_onnx(path) if graph == "hidden_states" else kv_cache_onnx(path)
    return ToyExported(onnx_path, hashlib.sha256(onnx_path.read_bytes()).hexdigest(), graph)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real MLflow store for the in-process tests (creating its tables takes seconds)."""
    from ascend_lab.config.tracking import TrackingConfig
    from ascend_lab.tracking import prepare_store

    return prepare_store(TrackingConfig(), tmp_path_factory.mktemp("mlflow"))


@pytest.fixture
def job(tmp_path, compose, monkeypatch, store):
    """``job(*overrides)`` → (cfg, ctx, finish) with a real MLflow run, launched from tmp_path;
    ``finish(status)`` ends the run and returns it as stored."""
    from ascend_lab.context import JobContext
    from ascend_lab.tracking import open_run

    monkeypatch.setenv("PATH", f"{FAKE_BIN}{os.pathsep}{os.environ['PATH']}")
    opened = []

    def _job(*overrides: str):
        cfg = validate(compose("task=compile", *overrides))
        tracker = open_run(store, f"compile-{len(opened)}", {"task": "compile"})
        output_dir = tmp_path / f"job{len(opened)}"
        output_dir.mkdir()
        opened.append(tracker)

        def finish(status: str = "FINISHED"):
            tracker.end(status)
            return tracker.client.get_run(tracker.run_id)

        return cfg, JobContext(cfg, tracker, tmp_path, output_dir), finish

    return _job


def artifacts(run, client) -> set[str]:
    return {a.path for a in client.list_artifacts(run.info.run_id)}


def test_compile_success_is_recorded_and_cached(tmp_path, job, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("FAKE_ATC_CALLS", str(calls))
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job("atc.soc_version=Ascend310", "atc.log=info")
    compiled = atc.ensure_compiled(cfg, ctx, exported)
    run = finish()

    assert compiled is not None and not compiled.cache_hit
    assert compiled.om_path.is_file() and compiled.om_path.name == "tiny_qwen_hidden_states_linux_x86_64.om"
    assert compiled.om_path.parent.parent == tmp_path / "outputs" / "om"
    assert compiled.sha256 == hashlib.sha256(compiled.om_path.read_bytes()).hexdigest()
    assert compiled.onnx_sha256 == exported.sha256
    assert compiled.soc_version == "Ascend310" and compiled.dynamic_mode == "static" and compiled.batch_gears is None
    header, onnx_bytes = read_om(compiled.om_path)
    assert onnx_bytes == exported.onnx_path.read_bytes() and header["soc_version"] == "Ascend310"

    tags, metrics = run.data.tags, run.data.metrics
    assert tags["om_sha256"] == compiled.sha256 and tags["onnx_sha256"] == exported.sha256
    assert tags["atc.input_shape"] == "input_ids:1,16;attention_mask:1,16"
    assert tags["atc_command"].startswith("atc --framework=5 --model=") and "--soc_version=Ascend310" in tags["atc_command"]
    assert metrics["compile_cache_hit"] == 0 and metrics["compile_seconds"] > 0
    client = ctx.tracker.client
    assert {"atc.log", "atc_command.txt", "compile.json"} <= artifacts(run, client)
    atc_log = Path(client.download_artifacts(run.info.run_id, "atc.log", str(tmp_path / "dl")))
    assert atc.SUCCESS_LINE in atc_log.read_text()
    assert len(calls.read_text().splitlines()) == 1

    # A second identical compile is a cache hit: atc does not run, the same .om comes back.
    cfg, ctx, finish = job("atc.soc_version=Ascend310", "atc.log=debug")
    again = atc.ensure_compiled(cfg, ctx, exported)
    run2 = finish()
    assert again.cache_hit and again.om_path == compiled.om_path and again.sha256 == compiled.sha256
    assert run2.data.metrics["compile_cache_hit"] == 1 and run2.data.tags["om_sha256"] == compiled.sha256
    assert len(calls.read_text().splitlines()) == 1
    # A different setting compiles anew into its own folder.
    cfg, ctx, finish = job("atc.soc_version=Ascend910B")
    other = atc.ensure_compiled(cfg, ctx, exported)
    finish()
    assert not other.cache_hit and other.om_path.parent != compiled.om_path.parent
    assert len(calls.read_text().splitlines()) == 2


@pytest.mark.parametrize("mode,expected", [
    ("fail", r"ATC failed \(exit status 1\)\.[\s\S]*error codes: E19999[\s\S]*ATC run failed, Please check"),
    ("no_success_line", "never printed 'ATC run success"),
    ("no_output", r"no .*tiny_qwen_hidden_states\*\.om exists"),
])
def test_compile_failures_quote_the_log(tmp_path, job, monkeypatch, mode, expected):
    monkeypatch.setenv("FAKE_ATC_MODE", mode)
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job()
    with pytest.raises(atc.AtcError, match=expected) as info:
        atc.ensure_compiled(cfg, ctx, exported)
    run = finish("FAILED")
    assert "ATC start working now" in str(info.value)  # the tail of the log is quoted
    assert str(ctx.output_dir / "atc.log") in str(info.value)
    assert "atc.log" in artifacts(run, ctx.tracker.client)
    # Nothing half-made is left to be mistaken for a cached result.
    assert not list((tmp_path / "outputs" / "om").rglob("*.om"))
    assert not list((tmp_path / "outputs" / "om").glob("*/compile.json"))


def _process_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_compile_timeout_kills_the_process_group(tmp_path, job, monkeypatch):
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_ATC_MODE", "hang")
    monkeypatch.setenv("FAKE_ATC_PIDFILE", str(pidfile))
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job("atc.timeout_s=3")
    start = time.monotonic()
    with pytest.raises(atc.AtcError, match=r"ATC timed out after 3 s \(atc.timeout_s\) and was killed"):
        atc.ensure_compiled(cfg, ctx, exported)
    finish("FAILED")
    assert time.monotonic() - start < 30
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _process_gone(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _process_gone(child), "the atc child process survived the timeout"


def test_no_atc_is_explained_or_skipped(tmp_path, job, monkeypatch):
    from ascend_lab import cann

    if cann.find_set_env() is not None:
        pytest.skip("a CANN toolkit is installed on this host")
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job()
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cann.find_atc() is None
    with pytest.raises(ToolchainError) as info:
        atc.ensure_compiled(cfg, ctx, exported, required=True)
    message = str(info.value)
    assert "CANN toolkit is not installed or its environment is not loaded" in message
    assert "/usr/local/Ascend/ascend-toolkit/set_env.sh" in message and "Ascend/cann/set_env.sh" in message
    # Not required (the pipeline): None, with the reason recorded.
    assert atc.ensure_compiled(cfg, ctx, exported) is None
    run = finish()
    assert "not installed" in run.data.tags["compile_skipped"]


def test_set_env_sh_provides_atc(tmp_path, job, monkeypatch):
    toolkit = tmp_path / "Ascend" / "ascend-toolkit"
    toolkit.mkdir(parents=True)
    (toolkit / "set_env.sh").write_text(f'echo "sourcing CANN"\nexport PATH="{FAKE_BIN}:$PATH"\n'
                                        f'export ASCEND_TOOLKIT_HOME="{toolkit}"\n')
    exported = toy_exported(tmp_path / "hs.onnx")
    cfg, ctx, finish = job(f"atc.toolkit_home={toolkit}")
    # Only the interpreter's folder (for the stand-in's `env python3`) and the system's: no atc.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:/usr/bin:/bin")
    assert atc.locate_toolkit(AtcConfig()).atc is None
    environment = atc.load_environment(cfg.atc)
    assert environment.set_env == toolkit / "set_env.sh" and environment.atc == FAKE_BIN / "atc"
    assert environment.env["ASCEND_TOOLKIT_HOME"] == str(toolkit)
    compiled = atc.ensure_compiled(cfg, ctx, exported, required=True)
    run = finish()
    assert compiled.om_path.is_file()
    text = Path(ctx.tracker.client.download_artifacts(run.info.run_id, "atc_command.txt", str(tmp_path / "d")))
    assert f"set_env.sh: {toolkit / 'set_env.sh'} (sourced" in text.read_text()


def test_dry_run_logs_command_and_environment(tmp_path, job, capsys):
    exported = toy_exported(tmp_path / "kv.onnx", graph="kv_cache")
    cfg, ctx, finish = job("atc.dry_run=true", "atc.soc_version=Ascend910B", "atc.toolkit_home=" + str(tmp_path / "no"))
    assert atc.ensure_compiled(cfg, ctx, exported, required=True) is None
    run = finish()
    out = capsys.readouterr().out
    command = run.data.tags["atc_command"]
    assert command in out and "set_env.sh: none found" in out
    assert "'--input_shape=input_ids:1,16;attention_mask:1,32;past_key_values.0.key:1,2,16,4;" in command
    assert run.data.tags["compile_skipped"].startswith("dry run")
    assert "om_sha256" not in run.data.tags and not (tmp_path / "outputs" / "om").exists()
    text = Path(ctx.tracker.client.download_artifacts(run.info.run_id, "atc_command.txt", str(tmp_path / "d")))
    assert text.read_text().startswith(command)


# ---------------------------------------------------------------------------------------------
# task=compile through the real CLI (needs the export stage)


def _export_available() -> bool:
    try:
        from ascend_lab.export import ensure_exported  # noqa: F401
    except ImportError:
        return False
    return True


cli = pytest.mark.skipif(not _export_available(), reason="ascend_lab.export.ensure_exported not available")


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory) -> str:
    """One export cache for the CLI tests: each graph is exported once, not once per test."""
    return f"export.cache_dir={tmp_path_factory.mktemp('export_cache')}"


@pytest.mark.slow
@cli
def test_cli_dry_run_default_kv_cache(run_cli, tmp_path, mlflow_runs, export_cache):
    result = run_cli("task=compile", "atc.dry_run=true", "atc.soc_version=Ascend910B", export_cache, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ATC dry run" in result.stdout and "ascend_lab compile" in result.stdout
    _, runs = mlflow_runs(tmp_path)
    tags = runs[0].data.tags
    command = tags["atc_command"]
    assert command.startswith("atc --framework=5 --model=") and "--soc_version=Ascend910B" in command
    layers = 2  # tiny_qwen
    expected = ";".join(["input_ids:1,16", "attention_mask:1,32"] + [
        f"past_key_values.{i}.{kind}:1,2,16,16" for i in range(layers) for kind in ("key", "value")])
    assert f"--input_shape={expected}" in command
    assert tags["onnx_sha256"] and tags["compile_skipped"].startswith("dry run")


@pytest.mark.slow
@cli
@pytest.mark.parametrize("overrides,text", [
    (("atc.precision_mode=force_fp16", "atc.precision_mode_v2=fp16"), "cannot be combined with atc.precision_mode"),
    (("atc.dynamic_mode=dynamic_dims",), "needs gears"),
    (("atc.dynamic_mode=shape_range", "atc.soc_version=Ascend310"), "not supported on Ascend310"),
    (("atc.soc_version=Ascend999",), "Ascend910_9362"),
])
def test_cli_invalid_combinations(run_cli, tmp_path, overrides, text):
    result = run_cli("task=compile", "atc.dry_run=true", *overrides, timeout=120)
    assert result.returncode == 1 and text in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs" / "export_cache").exists()  # rejected before any work


@pytest.mark.slow
@cli
def test_cli_compile_with_stand_in_atc(run_cli, tmp_path, mlflow_runs, export_cache):
    args = ("task=compile", "export.graph=hidden_states", "atc.soc_version=Ascend310",
            "atc.dynamic_mode=dynamic_batch_size", export_cache)
    first = run_cli(*args, path_prepend=[FAKE_BIN], timeout=300)
    assert first.returncode == 0, first.stderr
    assert atc.SUCCESS_LINE in first.stdout
    second = run_cli(*args, path_prepend=[FAKE_BIN], timeout=300)
    assert second.returncode == 0, second.stderr
    client, runs = mlflow_runs(tmp_path)
    runs = sorted(runs, key=lambda r: r.info.start_time)
    assert [r.data.metrics["compile_cache_hit"] for r in runs] == [0, 1]
    om = Path(runs[0].data.tags["om_path"])
    header, _ = read_om(om)
    assert header["dynamic"] == {"kind": "batch", "gears": [1, 4, 8]}
    assert runs[0].data.tags["om_sha256"] == runs[1].data.tags["om_sha256"]
    assert runs[0].data.tags["onnx_sha256"] == runs[1].data.tags["onnx_sha256"]
    assert "atc.log" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


@pytest.mark.slow
@cli
def test_cli_compile_without_atc_fails_clearly(run_cli, tmp_path, export_cache):
    from ascend_lab import cann

    if cann.find_atc() is not None or cann.find_set_env() is not None:
        pytest.skip("a CANN toolkit is installed on this host")
    result = run_cli("task=compile", "export.graph=hidden_states", "tracking=off", export_cache, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "CANN toolkit is not installed or its environment is not loaded" in result.stderr
    assert "/usr/local/Ascend/ascend-toolkit/set_env.sh" in result.stderr
    assert not (tmp_path / "outputs" / "om").exists()
