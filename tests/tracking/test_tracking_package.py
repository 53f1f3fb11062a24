"""The tracking package: one concern per module, no upward imports, the names other code imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ascend_lab.tracking as tracking

PACKAGE = Path(tracking.__file__).parent
# Code above tracking: tracking must reach none of it (the sweep summary comes in as a callable).
UPWARD = ("ascend_lab.bench", "ascend_lab.tasks", "ascend_lab.export", "ascend_lab.runtimes",
          "ascend_lab.compile", "ascend_lab.atc", "ascend_lab.context", "ascend_lab.run", "ascend_lab.models")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_tracking_module_imports_code_above_it():
    for path in sorted(PACKAGE.glob("*.py")):
        upward = {name for name in _imports(path) if name.startswith(UPWARD)}
        assert not upward, f"{path.name} imports {sorted(upward)}"


def test_importing_tracking_loads_no_benchmark_code():
    code = ("import sys, ascend_lab.tracking; "
            "print(sorted(m for m in sys.modules if m.startswith(('ascend_lab.bench', 'ascend_lab.tasks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_names_the_rest_of_the_project_imports_still_resolve():
    # Every `from ascend_lab.tracking import ...` in the tree, and the callback conf/config.yaml names.
    repo = PACKAGE.parent.parent
    wanted = {"SweepCallback"}
    for path in [*repo.glob("ascend_lab/**/*.py"), *repo.glob("tests/**/*.py"), *repo.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "ascend_lab.tracking":
                wanted.update(alias.name for alias in node.names)
    missing = sorted(name for name in wanted if not hasattr(tracking, name))
    assert not missing, missing


def test_sweep_summary_is_injected_not_imported():
    from ascend_lab.tracking.sweep import SweepCallback, resolve_summarizer

    assert resolve_summarizer(None) is None
    assert resolve_summarizer("ascend_lab.bench.summary.summarize_sweep").__name__ == "summarize_sweep"
    assert resolve_summarizer("ascend_lab.bench.summary.no_such_function") is None  # warned, sweep still closes
    assert SweepCallback()._summarize is None
