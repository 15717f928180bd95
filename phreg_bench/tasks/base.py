"""Task families are classes, tasks are data.

A task spec (YAML under ``tasks/``) names its family, dataset reader, split, expected sample count, class
file, main metric, protocol presets and a version. A :class:`TaskFamily` runs a spec on a
:class:`~phreg_bench.methods.base.DenseModel` and returns a :class:`TaskOutcome`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from phreg_bench.backbones.base import Backbone
from phreg_core.errors import ConfigError


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
        """sha256 over the spec's content (not where it was read from)."""
        data = asdict(self)
        data.pop("source_file")
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def protocol(self, name: str | None) -> tuple[str, dict[str, Any]]:
        """Resolve a protocol preset name (``None``: the spec's default) to its settings."""
        chosen = name or self.default_protocol
        if chosen not in self.protocols:
            known = ", ".join(sorted(self.protocols)) or "none"
            raise ConfigError(f"task {self.name!r} has no protocol {chosen!r} (known: {known})")
        return chosen, dict(self.protocols[chosen])


@dataclass
class RunContext:
    """Everything a task needs besides the model and the spec."""

    data_root: Path | None = None
    cache_dir: Path = Path(".phreg_cache")
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast, CUDA only)
    batch_size: int = 8
    num_workers: int = 0
    limit: int | None = None  # evaluate only the first N samples (the result is marked partial)
    seed: int = 0
    budget: str = "full"  # probe schedules: "full" (paper) or "quick"
    progress: Any = None  # a rich.progress.Progress (see phreg_bench.progress.track); None: silent
    options: dict[str, Any] = field(default_factory=dict)  # family-specific extras


@dataclass
class TaskOutcome:
    """What a task run measured."""

    main_metric: str
    metrics: dict[str, float]  # includes the main metric
    num_samples: int
    per_class: dict[str, float | None] = field(default_factory=dict)  # None: class absent (NaN in mmseg)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. cache mode, feature-cache hits
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase


class TaskFamily:
    """Base class of ``ovseg``, ``linseg``, ``depth`` and the built-in synthetic families."""

    name: str = ""
    needs_text: bool = False

    def applies_to(self, backbone: Backbone) -> bool:
        return backbone.has_text or not self.needs_text

    def resolve_settings(self, spec: TaskSpec, protocol: str | None, ctx: RunContext) -> dict[str, Any]:
        """The full resolved protocol settings recorded in the result and hashed."""
        name, settings = spec.protocol(protocol)
        return {"name": name, **settings}

    def run(self, model, spec: TaskSpec, settings: dict[str, Any], ctx: RunContext) -> TaskOutcome:
        raise NotImplementedError
