"""The task registries and their built-in entries: ``TASK_FAMILIES`` (classes, declared lazily), ``TASKS``
(the specs of the shipped ``tasks/`` folder) and ``SUITES`` (``tasks/suites.yaml``).

The YAML is read on the first lookup of ``TASKS`` or ``SUITES``, not at import, so listing methods or
backbones parses no task file and imports no task family (nor torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from phreg_bench.registry import Registry

if TYPE_CHECKING:
    from phreg_bench.tasks.base import TaskFamily
    from phreg_bench.tasks.specs import TaskSpec


def _builtin_specs(registry: Registry[TaskSpec]) -> None:
    from phreg_bench.tasks.specs import load_builtin_specs

    for spec in load_builtin_specs():
        registry.add(spec.name, spec, family=spec.family, short_name=spec.short_name)


def _builtin_suites(registry: Registry[dict[str, Any]]) -> None:
    from phreg_bench.tasks.specs import load_suites

    for name, suite in load_suites().items():
        registry.add(name, suite)


TASK_FAMILIES: Registry[Callable[[], TaskFamily]] = Registry(
    "task family", makes="phreg_bench.tasks.base:TaskFamily")
TASKS: Registry[TaskSpec] = Registry(
    "task", "phreg_bench.tasks", instance_of="phreg_bench.tasks.specs:TaskSpec", builtins=_builtin_specs)
SUITES: Registry[dict[str, Any]] = Registry("suite", instance_of=dict, builtins=_builtin_suites)

TASK_FAMILIES.add("synthetic", "phreg_bench.synthetic.family:SyntheticSegmentation")
TASK_FAMILIES.add("ovseg", "phreg_bench.tasks.ovseg.family:OpenVocabSegmentation")
TASK_FAMILIES.add("linseg", "phreg_bench.tasks.linseg:LinearProbeSegmentation")
TASK_FAMILIES.add("depth", "phreg_bench.tasks.depth:LinearProbeDepth")
