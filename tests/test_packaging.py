"""The wheel ships every code package and the task specs, class files and templates."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("phreg_core", "phreg_bench")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normalise(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def _imported_distributions() -> set[str]:
    """Distributions of every top-level module the package code imports (module or function level)."""
    modules: set[str] = set()
    for top in ("phreg_core", "phreg_bench"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    modules.add(node.module.split(".")[0])
    owners = metadata.packages_distributions()
    return {_normalise(dist) for module in modules for dist in owners.get(module, [])}


def test_every_declared_dependency_is_imported():
    """pyproject.toml declares only what the code imports (a declared, unused package was torchmetrics)."""
    unused = _declared_dependencies() - _imported_distributions()
    assert not unused, f"declared in pyproject.toml but never imported: {sorted(unused)}"


def test_provenance_records_only_declared_packages():
    from phreg_bench.results.provenance import PACKAGES

    undeclared = {_normalise(name) for name in PACKAGES} - {"phreg-bench"} - _declared_dependencies()
    assert not undeclared, f"provenance records packages pyproject.toml does not declare: {sorted(undeclared)}"


def test_wheel_contains_task_specs(tmp_path):
    # built from a copy: setuptools leaves build/ in the source folder, and a stale build/lib would put
    # modules that no longer exist into later wheels
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        "build", ".git", ".venv", "*.egg-info", "__pycache__", ".phreg_cache", "phreg_results", "tests"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("phreg_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {name for name in names if name.endswith(".py") and name.startswith(("phreg_bench/", "phreg_core/"))}
    expected = {str(path.relative_to(ROOT)) for package in ("phreg_bench", "phreg_core")
                for path in (ROOT / package).rglob("*.py")}
    specs = ROOT / "tasks"  # shipped as phreg_bench.task_specs
    expected |= {f"phreg_bench/task_specs/{path.relative_to(specs)}" for path in specs.rglob("*.py")}
    assert shipped == expected, "the wheel ships exactly the source modules"
    assert "phreg_bench/task_specs/suites.yaml" in names
    assert "phreg_bench/task_specs/classnames/voc21.txt" in names
    assert "phreg_bench/task_specs/templates/imagenet_templates.txt" in names
    assert "phreg_bench/task_specs/synthetic/segmentation.yaml" in names
    assert "phreg_core/vit.py" in names
