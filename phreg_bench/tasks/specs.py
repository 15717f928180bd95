"""Reading task specs and suites from YAML (with lm-evaluation-harness style ``include:``)."""

from __future__ import annotations

from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from phreg_bench.tasks.base import TaskSpec
from phreg_core.errors import FileFormatError, MissingFileError


def spec_root() -> Path:
    """The shipped ``tasks/`` folder (installed as the ``phreg_bench.task_specs`` package)."""
    return Path(str(resources.files("phreg_bench.task_specs")))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise FileFormatError(f"{path}: invalid YAML ({error})") from error
    if not isinstance(data, dict):
        raise FileFormatError(f"{path}: a task spec must be a mapping")
    include = data.pop("include", None)
    if include:
        base = _read_yaml(path.parent / include)
        data = _deep_merge(base, data)
    return data


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_spec(path: Path) -> TaskSpec:
    """Read one spec file; unknown keys are an error naming the file."""
    data = _read_yaml(path)
    known = {f.name for f in fields(TaskSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise FileFormatError(f"{path}: unknown task-spec keys {unknown}; allowed: {sorted(known)}")
    missing = [key for key in ("name", "family", "dataset", "version") if key not in data]
    if missing:
        raise FileFormatError(f"{path}: missing required keys {missing}")
    data["version"] = str(data["version"])
    return TaskSpec(**data, source_file=str(path))


def load_builtin_specs(root: Path | None = None) -> list[TaskSpec]:
    """Every ``tasks/<family>/<name>.yaml`` (files starting with '_' are include-only bases)."""
    root = root or spec_root()
    return [load_spec(path) for path in sorted(root.glob("*/*.yaml")) if not path.name.startswith("_")]


def load_suites(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Named task lists from ``tasks/suites.yaml``."""
    path = (root or spec_root()) / "suites.yaml"
    return _read_yaml(path) if path.exists() else {}


def class_file(name: str) -> Path:
    path = spec_root() / "classnames" / name
    if not path.exists():
        raise MissingFileError(f"class-name file {path} not found")
    return path
