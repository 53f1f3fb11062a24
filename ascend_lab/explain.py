"""``--help``: the tasks, the groups and their options, and each key's help from the dataclass metadata.

``python -m ascend_lab.run --help`` lists every task (from :class:`~ascend_lab.config.Task`, described by its
module's docstring), every config group with its options (conf/) and how to read a group's keys;
``python -m ascend_lab.run --help benchmark`` prints the ``benchmark`` group's keys with their types, defaults
and help text, straight from the dataclass fields that are their one source (``--help root``: ``task``, ``seed``,
``verbose``). Both answer without composing a config: no Hydra, OmegaConf or torch is imported.
Hydra's own help stays at ``--hydra-help``.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
import textwrap
from enum import Enum
from pathlib import Path
from typing import Sequence

HELP_FLAGS = ("--help", "-h")
ROOT = "root"
WIDTH = 100
PACKAGE = Path(__file__).resolve().parent


def help_asked(argv: Sequence[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv)


def _conf_dir() -> Path:
    checkout = PACKAGE.parent / "conf"
    return checkout if (checkout / "config.yaml").is_file() else PACKAGE / "conf"


def _task_summary(task: str) -> str:
    """The first sentence of the task module's docstring, read without importing the module."""
    source = PACKAGE / "tasks" / f"{task}.py"
    doc = ast.get_docstring(ast.parse(source.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    first = first.split(": ", 1)[1] if first.startswith(f"task={task}") and ": " in first else first
    sentence = first.split(". ")[0].rstrip(".").replace("``", "")
    return sentence.split(" (")[0] if len(sentence) > 80 else sentence


def _groups() -> dict[str, list[str]]:
    """Each group's options: its conf/ files, and the runtime group's schemas (ConfigStore nodes, no files)."""
    from ascend_lab.runtimes.registry import RUNTIME_CONFIGS

    conf = _conf_dir()
    groups = {d.name: sorted(p.stem for p in d.glob("*.yaml"))
              for d in conf.iterdir() if d.is_dir() and d.name != "hydra" and any(d.glob("*.yaml"))}
    return dict(sorted({**groups, "runtime": sorted(RUNTIME_CONFIGS)}.items()))


def _defaults() -> dict[str, str]:
    """Each group's option in conf/config.yaml's defaults list."""
    import yaml

    config = yaml.safe_load((_conf_dir() / "config.yaml").read_text(encoding="utf-8"))
    return {k: str(v) for entry in config.get("defaults", []) if isinstance(entry, dict) for k, v in entry.items()}


def general_help() -> str:
    from ascend_lab.config import AppConfig, Task

    tasks = [task.value for task in Task]
    lines = [
        "ascend_lab: deploy Qwen on Ascend NPUs (and CUDA/CPU) as one reproducible, MLflow-tracked run.",
        f"Usage: python -m ascend_lab.run [task={'|'.join(tasks)}] [group=option] [key=value] [-m sweeps]",
        "",
        f"Tasks (task=..., default {AppConfig.task.value}):",
        *(f"  {task:<9} {_task_summary(task)}" for task in tasks),
        "",
        "Config groups (group=option; * marks the default):",
    ]
    defaults = _defaults()
    for group, options in _groups().items():
        marked = [f"{o}*" if defaults.get(group) == o else o for o in options]
        lines.append(f"  {group + ':':<16} {', '.join(marked)}")
    lines += [
        "",
        "Each key's help, type and default: python -m ascend_lab.run --help <group>   (e.g. --help benchmark;",
        f"  --help {ROOT} for task, seed and verbose). The composed config: python -m ascend_lab.run --cfg job.",
        "Hydra's own flags: --hydra-help.  Third-party log lines are quiet unless verbose=true.",
        "Browse results: mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db",
        "Full reference: README.md; 中文说明: README.zh-CN.md",
    ]
    return "\n".join(lines)


def _default_of(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "???"


def _shown(value: object) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, str):
        return repr(value) if value == "" or value != value.strip() else value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(getattr(value, "value", value))


def key_lines(schema: type, prefix: str) -> list[str]:
    """``prefix.key: type = default`` and the help text, indented, for every field (nested groups recursed)."""
    lines = []
    for f in dataclasses.fields(schema):
        if f.name.startswith("_"):  # _target_: the class a runtime's options instantiate, not a setting
            continue
        default = _default_of(f)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            lines += key_lines(type(default), f"{prefix}{f.name}.")
            continue
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        lines.append(f"{prefix}{f.name}: {type_name} = {_shown(default)}")
        text = f.metadata.get("help", "")
        if text:
            lines += textwrap.wrap(text, WIDTH, initial_indent="    ", subsequent_indent="    ")
    return lines


def group_help(group: str) -> str | None:
    """A group's keys with their help and defaults; None for a name that is not a group."""
    from ascend_lab.config import AppConfig

    fields = {f.name: f for f in dataclasses.fields(AppConfig)}
    if group == ROOT:
        root = [f for f in fields.values() if not dataclasses.is_dataclass(_default_of(f))]
        lines = []
        for f in root:
            lines.append(f"{f.name}: {f.type} = {_shown(_default_of(f))}")
            lines += textwrap.wrap(f.metadata.get("help", ""), WIDTH, initial_indent="    ", subsequent_indent="    ")
        return "root keys (ascend_lab/config/__init__.py):\n" + "\n".join(lines)
    if group not in fields or not dataclasses.is_dataclass(_default_of(fields[group])):
        return None
    schema = type(_default_of(fields[group]))
    options = _groups().get(group, [])
    about = fields[group].metadata.get("help")
    if group != "runtime":
        head = f"{group} ({_source(schema)}; options: {', '.join(options) or 'none'}): key: type = default, then its help"
        return "\n".join([head, *(textwrap.wrap(about, WIDTH) if about else []), *key_lines(schema, f"{group}.")])
    from ascend_lab.runtimes.registry import RUNTIME_CONFIGS

    lines = [f"runtime (options: {', '.join(options)}; each has its own keys, and another runtime's key is refused): "
             "key: type = default, then its help"]
    for name, option in RUNTIME_CONFIGS.items():
        lines += ["", f"runtime={name} ({_source(option)}):", *key_lines(option, "runtime.")]
    return "\n".join(lines)


def _source(schema: type) -> Path:
    return Path(sys.modules[schema.__module__].__file__).resolve().relative_to(PACKAGE.parent)


def print_help(argv: Sequence[str]) -> int:
    """Answer ``--help [group]``; returns the exit status."""
    topics = [arg for arg in argv if not arg.startswith("-")]
    if not topics:
        print(general_help())
        return 0
    from ascend_lab.config import AppConfig

    for topic in topics:
        text = group_help(topic.split("=")[0])
        if text is None:
            groups = [f.name for f in dataclasses.fields(AppConfig) if dataclasses.is_dataclass(_default_of(f))]
            print(f"--help {topic}: no such group; groups: {', '.join(groups)} (or {ROOT})", file=sys.stderr)
            return 1
        print(text)
    return 0
