"""The wheel ships every code package and the task specs, class files and templates."""

from __future__ import annotations

import subprocess
import sys
import zipfile
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


def test_wheel_contains_task_specs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("phreg_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "phreg_bench/task_specs/suites.yaml" in names
    assert "phreg_bench/task_specs/classnames/voc21.txt" in names
    assert "phreg_bench/task_specs/templates/imagenet_templates.txt" in names
    assert "phreg_bench/task_specs/synthetic/segmentation.yaml" in names
    assert "phreg_core/vit.py" in names
