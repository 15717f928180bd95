"""Built-in task families, task specs (read from the shipped ``tasks/`` folder) and suites."""

from __future__ import annotations

from phreg_bench.registries import SUITES, TASK_FAMILIES, TASKS
from phreg_bench.tasks.specs import load_builtin_specs, load_suites

TASK_FAMILIES.add("synthetic", "phreg_bench.tasks.synthetic:SyntheticSegmentation")

for _spec in load_builtin_specs():
    TASKS.add(_spec.name, _spec, family=_spec.family, short_name=_spec.short_name)

for _name, _suite in load_suites().items():
    SUITES.add(_name, _suite)
TASK_FAMILIES.add("ovseg", "phreg_bench.tasks.ovseg:OpenVocabSegmentation")
TASK_FAMILIES.add("linseg", "phreg_bench.tasks.linseg:LinearProbeSegmentation")
TASK_FAMILIES.add("depth", "phreg_bench.tasks.depth:LinearProbeDepth")
