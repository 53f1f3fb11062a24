"""Config composition and validation: every group composes; bad input fails before any work."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from ascend_lab.config import AppConfig, Task, validate
from ascend_lab.config.atc import SOC_VERSIONS
from ascend_lab.errors import ConfigError
from tests.conftest import CONF_DIR

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    for group in ("device", "model", "export", "atc", "runtime", "benchmark", "tracking", "mnist", "doctor")
}


def test_defaults_compose_and_validate(compose):
    cfg = compose()
    app = validate(cfg)
    assert isinstance(app, AppConfig)
    assert app.task is Task.pipeline
    assert app.device.name == "auto"
    assert app.model.name == "tiny_qwen" and app.model.weights == "random"
    assert app.export.opset == 17 and app.export.do_constant_folding is False
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
            "device", "model", "export", "atc", "runtime", "benchmark", "tracking", "mnist", "doctor"), field.name
        if field.name in GROUP_OPTIONS:
            schema = type(getattr(AppConfig(), field.name))
            for sub in dataclasses.fields(schema):
                assert sub.metadata.get("help"), f"{field.name}.{sub.name} has no help text"


def test_yaml_defaults_match_schema_defaults(compose):
    """The YAML files restate the schema defaults: a drift would make docs and behaviour disagree."""
    composed = OmegaConf.to_container(compose(), enum_to_str=True)
    for group in ("export", "atc", "benchmark", "mnist", "doctor"):
        schema_default = OmegaConf.to_container(OmegaConf.structured(type(getattr(AppConfig(), group))))
        assert composed[group] == schema_default, group


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
