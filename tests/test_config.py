"""Config composition and validation: every group composes; bad input fails before any work."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ascend_lab.config import AppConfig, RuntimeConfig, Task, validate
from ascend_lab.config.atc import SOC_VERSIONS
from ascend_lab.config.runtime import RUNTIME_FIELDS, RUNTIME_NAMES, ignored_runtime_keys
from ascend_lab.errors import ConfigError
from tests.conftest import CONF_DIR

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for group in ("device", "model", "export", "atc", "runtime", "benchmark", "tracking", "mnist", "doctor", "profile",
                  "search")
}


def test_defaults_compose_and_validate(compose):
    cfg = compose()
    app = validate(cfg)
    assert isinstance(app, AppConfig)
    assert app.task is Task.pipeline
    assert app.device.name == "auto"
    assert app.model.name == "tiny_qwen" and app.model.weights == "random"
    assert app.export.opset == 14 and app.export.do_constant_folding is False
    assert app.atc.input_format == "ND"
    assert app.benchmark.batch_sizes == [1, 4, 8]
    assert app.tracking.uri == "sqlite:///outputs/mlflow.db"


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes(compose, group, option):
    app = validate(compose(f"{group}={option}"))
    node = getattr(app, group)
    if hasattr(node, "name") and group in ("device", "runtime", "model"):
        assert node.name == option


def test_every_schema_field_is_documented():
    import dataclasses

    for field in dataclasses.fields(AppConfig):
        assert field.metadata.get("help") or dataclasses.is_dataclass(field.type) or field.name in (
            "device", "model", "export", "atc", "runtime", "benchmark", "tracking", "mnist", "doctor", "profile",
            "search", "telemetry", "accuracy"), field.name
        if field.name in GROUP_OPTIONS:
            schema = type(getattr(AppConfig(), field.name))
            for sub in dataclasses.fields(schema):
                assert sub.metadata.get("help"), f"{field.name}.{sub.name} has no help text"


# Preset keys a model option states even where they equal the schema default: the checkpoint's identity
# and architecture, so the file reads as the model it stands for.
MODEL_PRESET_KEYS = ("name", "weights", "model_id", "dtype", "num_hidden_layers", "hidden_size",
                     "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size",
                     "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings")


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_group_yaml_states_only_differences(group, option):
    """The dataclasses are the one source of defaults: an option file states what selects it (name) and
    what differs, never a default restated (which would drift from the schema unnoticed)."""
    stated = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml") or OmegaConf.create())
    schema = OmegaConf.to_container(OmegaConf.structured(type(getattr(AppConfig(), group))))
    for key, value in stated.items():
        assert key in schema, f"conf/{group}/{option}.yaml: {key} is not a {group} field"
        if key == "name" or (group == "model" and key in MODEL_PRESET_KEYS):
            continue
        assert value != schema[key], f"conf/{group}/{option}.yaml restates the default {key}: {value!r}"


def test_trimmed_yaml_composes_to_the_schema_defaults(compose):
    composed = OmegaConf.to_container(compose(), enum_to_str=True)
    for group in ("export", "atc", "benchmark", "mnist", "doctor", "runtime", "device", "tracking"):
        schema_default = OmegaConf.to_container(OmegaConf.structured(type(getattr(AppConfig(), group))))
        assert composed[group] == schema_default, group


def test_runtime_table_names_real_fields_and_covers_them():
    import dataclasses

    fields = {f.name for f in dataclasses.fields(RuntimeConfig)} - {"name"}
    listed = {name for names in RUNTIME_FIELDS.values() for name in names}
    assert listed <= fields
    assert fields <= listed, f"runtime fields no runtime reads: {fields - listed}"
    assert set(RUNTIME_FIELDS) == set(RUNTIME_NAMES) - {"auto"}


@pytest.mark.parametrize("overrides,runtime,expected", [
    ({"graph_capture": True}, "onnxruntime",
     {"runtime.graph_capture": "runtime.graph_capture=true has no effect on runtime=onnxruntime (only "
                               "runtime=torch reads it); drop it or choose runtime=torch"}),
    ({"graph_optimization": "basic", "intra_op_threads": 4}, "acl",
     {"runtime.intra_op_threads": "runtime.intra_op_threads=4 has no effect on runtime=acl (only runtime=torch "
                                  "or runtime=onnxruntime reads it); drop it or choose runtime=torch or "
                                  "runtime=onnxruntime",
      "runtime.graph_optimization": "runtime.graph_optimization=basic has no effect on runtime=acl (only "
                                    "runtime=onnxruntime reads it); drop it or choose runtime=onnxruntime"}),
    ({"inter_op_threads": 2, "compile": True}, "torch",
     {"runtime.inter_op_threads": "runtime.inter_op_threads=2 has no effect on runtime=torch (only "
                                  "runtime=onnxruntime reads it); drop it or choose runtime=onnxruntime"}),
    ({"compile_backend": "inductor"}, "torch",
     {"runtime.compile_backend": "runtime.compile_backend=inductor has no effect without runtime.compile=true; "
                                 "set both or drop it"}),
    ({"graph_capture": True, "compile": True, "compile_backend": "inductor", "intra_op_threads": 8}, "torch", {}),
    ({"intra_op_threads": 8, "inter_op_threads": 2, "graph_optimization": "basic"}, "onnxruntime", {}),
    ({}, "acl", {}),
])
def test_ignored_runtime_keys(overrides, runtime, expected):
    assert ignored_runtime_keys(RuntimeConfig(name="auto", **overrides), runtime) == expected


def test_ignored_runtime_keys_needs_the_resolved_runtime():
    with pytest.raises(ValueError, match="resolved"):
        ignored_runtime_keys(RuntimeConfig(), "auto")


@pytest.mark.parametrize("override,key", [
    ("benchmark.batch_size=0", "benchmark.batch_size"),
    ("benchmark.batch_size=-2", "benchmark.batch_size"),
    ("atc.soc_version=Ascend910X", "atc.soc_version"),
    ("export.graph=full", "export.graph"),
    ("mnist.epochs=0", "mnist.epochs"),
    ("tracking.uri=notauri", "tracking.uri"),
    ("model.dtype=float64", "model.dtype"),
])
def test_invalid_values_name_the_key(compose, override, key):
    with pytest.raises(ConfigError) as info:
        validate(compose(override))
    assert info.value.key == key
    assert key in str(info.value)


def test_soc_error_lists_valid_names(compose):
    with pytest.raises(ConfigError) as info:
        validate(compose("atc.soc_version=Ascend910X"))
    for name in SOC_VERSIONS:
        assert name in str(info.value)


def test_precision_modes_are_exclusive(compose):
    with pytest.raises(ConfigError, match="atc.precision_mode"):
        validate(compose("atc.precision_mode=force_fp16", "atc.precision_mode_v2=fp16"))
