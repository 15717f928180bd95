"""The project's registries. Built-in entries are declared (lazily, as ``module:attr`` strings) in each
subsystem's ``catalogue`` module, imported at the bottom of this file."""

from __future__ import annotations

from phreg_bench.registry import Registry

BACKBONES = Registry("backbone", "phreg_bench.backbones")
METHODS = Registry("method", "phreg_bench.methods")
TASKS = Registry("task", "phreg_bench.tasks")
TASK_FAMILIES = Registry("task family")
SUITES = Registry("suite")
DATASETS = Registry("dataset")

# Declarations only: these modules add string targets and metadata, and import nothing heavy.
from phreg_bench.backbones import catalogue as _backbones  # noqa: E402, F401
from phreg_bench.datasets import catalogue as _datasets  # noqa: E402, F401
from phreg_bench.methods import catalogue as _methods  # noqa: E402, F401
from phreg_bench.tasks import catalogue as _tasks  # noqa: E402, F401
