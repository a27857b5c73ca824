"""The package: a light import, working docstring examples, no bare top-level imports."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "great_expectations", "evidently", "mlflow", "sklearn")


@pytest.mark.parametrize("module", ["prefect_mlops", "prefect_mlops.blocks", "prefect_mlops.flows"])
def test_import_loads_no_heavy_library(module):
    code = f"import sys, {module}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"import {module} loaded {loaded}"


def modules() -> list[str]:
    """Every module of the package, found on disk: a new module's examples are run without a list to edit."""
    import pkgutil

    # tasks/, flows/ and blocks/ install through setuptools' package-dir, so each is walked from its own path.
    roots = ["prefect_mlops", "prefect_mlops.tasks", "prefect_mlops.flows", "prefect_mlops.blocks"]
    found = set(roots)
    for root in roots:
        package = importlib.import_module(root)
        found |= {m.name for m in pkgutil.walk_packages(package.__path__, f"{root}.")}
    # The DAG factories import Airflow, which lives in its own venv: tests/airflow runs their examples there.
    return sorted(found - {"prefect_mlops.airflow.dags"})


# A saved Block is loaded by name on a server; the example's other lines run here.
_LOAD_LINE = re.compile(r"^.*\.load\(\"BLOCK_NAME\"\).*$\n?", re.M)


def examples():
    for name in modules():
        module = importlib.import_module(name)
        for obj in [module, *vars(module).values()]:
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ != name:
                continue
            for index, code in enumerate(re.findall(r"```python\n(.*?)```", inspect.getdoc(obj) or "", re.S)):
                code = _LOAD_LINE.sub("", textwrap.dedent(code))
                yield pytest.param(code, id=f"{name}.{getattr(obj, '__name__', name)}[{index}]")


@pytest.mark.parametrize("code", list(examples()))
def test_docstring_example_runs(code):
    exec(compile(code, "<docstring>", "exec"), {})


def test_no_bare_top_level_imports_of_our_folders():
    for path in [*ROOT.glob("tasks/*.py"), *ROOT.glob("flows/*.py"), *ROOT.glob("blocks/*.py"),
                 *ROOT.glob("src/prefect_mlops/*.py"), *ROOT.glob("tests/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert name.split(".")[0] not in {"tasks", "flows", "blocks"}, f"{path}: import {name}"

