"""Config composition and validation: every group composes; bad input fails before any work."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ascend_lab.config import AppConfig, Task, validate
from ascend_lab.config.atc import SOC_VERSIONS
from ascend_lab.errors import ConfigError
from ascend_lab.runtimes.registry import RUNTIME_CONFIGS
from tests.conftest import CONF_DIR

# Option files per group; the runtime group's options are its ConfigStore nodes (one schema per runtime).
GROUP_FILES = {
    group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for group in ("device", "model", "export", "atc", "benchmark", "tracking", "mnist", "doctor", "profile", "search")
}
GROUP_OPTIONS = {**GROUP_FILES, "runtime": sorted(RUNTIME_CONFIGS)}


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
            schemas = RUNTIME_CONFIGS.values() if field.name == "runtime" else [type(getattr(AppConfig(), field.name))]
            for schema in schemas:
                for sub in dataclasses.fields(schema):
                    assert sub.metadata.get("help") or sub.name == "_target_", f"{field.name}.{sub.name} has no help"


# Preset keys a model option states even where they equal the schema default: the checkpoint's identity
# and architecture, so the file reads as the model it stands for.
MODEL_PRESET_KEYS = ("name", "weights", "model_id", "dtype", "num_hidden_layers", "hidden_size",
                     "num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size",
                     "max_position_embeddings", "rope_theta", "rms_norm_eps", "tie_word_embeddings")


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_FILES.items() for o in opts])
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


@pytest.mark.parametrize("runtime,key", [
    ("onnxruntime", "graph_capture"), ("onnxruntime", "compile"), ("torch", "inter_op_threads"),
    ("torch", "graph_optimization"), ("acl", "intra_op_threads"), ("auto", "transformer_optimize"),
])
def test_a_key_the_runtime_does_not_read_cannot_be_set(compose, runtime, key):
    """Each runtime's keys are its own schema: another runtime's key fails at composition, naming it."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as failure:
        compose(f"runtime={runtime}", f"runtime.{key}=1")
    assert f"runtime.{key}" in str(failure.value)


def test_the_cli_refuses_a_key_of_another_runtime(run_cli):
    proc = run_cli("task=bench", "runtime=onnxruntime", "runtime.graph_capture=true", "tracking=off", timeout=120)
    assert proc.returncode != 0
    assert "runtime.graph_capture" in proc.stderr and "OnnxRuntimeConfig" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("overrides,key,problem", [
    (("runtime=torch", "runtime.compile_backend=inductor"), "runtime.compile_backend", "runtime.compile=true"),
    (("runtime.name=torch",), "runtime.name", "use runtime=torch"),
    (("runtime=onnxruntime", "runtime.name=acl"), "runtime.name", "use runtime=acl"),
])
def test_runtime_choices_are_made_with_the_group(compose, overrides, key, problem):
    with pytest.raises(ConfigError, match=problem) as failure:
        validate(compose(*overrides))
    assert failure.value.key == key


def test_each_runtime_validates_to_its_own_schema(compose):
    for name, schema in RUNTIME_CONFIGS.items():
        runtime = validate(compose(f"runtime={name}")).runtime
        assert type(runtime) is schema and runtime.name == name


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
