"""The package's layers (``[tool.importlinter]`` in pyproject.toml) hold, and they catch an import that climbs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO  # noqa: E402
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` over the ``ascend_lab`` package under ``root`` with ``root``'s pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_layers_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_that_climbs_breaks_them(tmp_path):
    shutil.copytree(REPO / "ascend_lab", tmp_path / "ascend_lab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    engine = tmp_path / "ascend_lab" / "runtimes" / "engine.py"
    engine.write_text(engine.read_text(encoding="utf-8") + "\nfrom ascend_lab.tasks import bench  # climbs\n",
                      encoding="utf-8")
    torch_runtime = tmp_path / "ascend_lab" / "runtimes" / "torch" / "runtime.py"
    torch_runtime.write_text(torch_runtime.read_text(encoding="utf-8")
                             + "\nfrom ascend_lab.runtimes.acl import pyacl  # a sibling runtime\n", encoding="utf-8")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "ascend_lab.runtimes is not allowed to import ascend_lab.tasks" in result.stdout
    assert "ascend_lab.runtimes.torch is not allowed to import ascend_lab.runtimes.acl" in result.stdout
