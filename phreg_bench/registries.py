"""All of the project's registries in one import. Each is owned (created and filled) by its subsystem's
``catalogue`` module; this module only re-exports them and nothing imports it from below."""

from __future__ import annotations

from phreg_bench.backbones.catalogue import BACKBONES
from phreg_bench.datasets.catalogue import DATASETS
from phreg_bench.methods.catalogue import METHODS
from phreg_bench.tasks.catalogue import SUITES, TASK_FAMILIES, TASKS

__all__ = ["BACKBONES", "DATASETS", "METHODS", "SUITES", "TASKS", "TASK_FAMILIES"]
