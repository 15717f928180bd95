"""Task specs (:class:`TaskSpec`) and reading them and the suites from YAML (with lm-evaluation-harness
style ``include:``). Imports neither torch nor a task family: listing tasks stays light."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from phreg_bench.protocol_settings import PROTOCOL_FLAG, ProtocolError
from phreg_core.errors import FileFormatError, MissingFileError


@dataclass(frozen=True)
class TaskSpec:
    """One task as declared in its YAML file."""

    name: str  # full name "family/dataset", e.g. "ovseg/voc21"
    family: str
    dataset: str  # dataset reader name in the DATASETS registry
    version: str
    split: str = "val"
    num_samples: int | None = None  # expected count of the full split (None: generated on the fly)
    classes: str | None = None  # class-name file under tasks/classnames/
    metric: str = "mIoU"
    higher_is_better: bool = True
    short_name: str | None = None  # e.g. "voc" (expands to every family that applies)
    description: str = ""
    default_protocol: str = "default"
    protocols: dict[str, dict[str, Any]] = field(default_factory=dict)
    source_file: str | None = None

    @property
    def dataset_name(self) -> str:
        return self.name.split("/", 1)[1]

    def spec_hash(self) -> str:
        """sha256 over the spec's content (not where it was read from).

        Not :func:`phreg_core.hashing.canonical_json`: this exact serialisation (``json.dumps`` with sorted
        keys and its default separators) is recorded in every result and enters its ``config_hash`` (the
        file name), so changing it would orphan every result written so far.
        """
        data = asdict(self)
        data.pop("source_file")
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def protocol(self, name: str | None) -> tuple[str, dict[str, Any]]:
        """Resolve a protocol preset name (``None``: the spec's default) to its settings.

        Raises :class:`~phreg_bench.protocol_settings.ProtocolError` naming the known presets.
        """
        chosen = name or self.default_protocol
        if chosen not in self.protocols:
            known = ", ".join(sorted(self.protocols)) or "none"
            raise ProtocolError(f"{PROTOCOL_FLAG} {chosen}: task {self.name!r} has no such protocol (known: {known})")
        return chosen, dict(self.protocols[chosen])


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
