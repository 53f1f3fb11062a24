"""A non-editable install finds its packaged configs (conf/ ships as ascend_lab.conf)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

import pytest

from tests.conftest import REPO, cli_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(out)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("ascend_lab-*.whl")
    return path


def test_wheel_ships_every_package_and_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    on_disk = {str(p.parent.relative_to(REPO)).replace("/", ".") for p in (REPO / "ascend_lab").rglob("__init__.py")}
    assert on_disk <= set(declared), f"packages missing from pyproject.toml: {on_disk - set(declared)}"
    for package in declared:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    for yaml in (REPO / "conf").rglob("*.yaml"):
        assert f"ascend_lab/conf/{yaml.relative_to(REPO / 'conf')}" in names, yaml
    assert "ascend_lab/compile/atc_onnx_ops.json" in names  # the op check's table is data in the package


def test_installed_wheel_runs_from_anywhere(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = cli_env()
    env["PYTHONPATH"] = str(target)
    launch = tmp_path / "launch"
    launch.mkdir()
    result = subprocess.run([sys.executable, "-m", "ascend_lab.run", "task=doctor", "tracking=off",
                             "doctor.matmul_size=64"], cwd=launch, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ascend_lab doctor" in result.stdout
    probe = subprocess.run([sys.executable, "-c", "import ascend_lab.run as r; print(r.CONFIG_PATH)"], cwd=launch,
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.stdout.strip() == "pkg://ascend_lab.conf"
    # --help reads the packaged conf/ and the task modules' docstrings.
    helped = subprocess.run([sys.executable, "-m", "ascend_lab.run", "--help"], cwd=launch, env=env,
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "runtime:" in helped.stdout and "accuracy  one candidate" in helped.stdout, \
        helped.stdout + helped.stderr
