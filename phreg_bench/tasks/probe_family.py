"""The base class of the probe task families (``linseg``, ``depth``): the run's budget is part of the preset."""

from __future__ import annotations

from typing import Any

from phreg_bench.probes.protocol import resolve_budget
from phreg_bench.tasks.base import RunContext, TaskFamily, TaskSpec


class ProbeFamily(TaskFamily):
    """The probe families' shared settings resolution: the run's budget flattened into the preset."""

    def preset(self, spec: TaskSpec, protocol: str | None, ctx: RunContext) -> tuple[str, dict[str, Any]]:
        name, settings = spec.protocol(protocol)
        settings = resolve_budget(settings, ctx.budget)
        settings.pop("budget")  # set by fixed_settings, after the overrides
        return name, settings

    def fixed_settings(self, ctx: RunContext) -> dict[str, Any]:
        return {"budget": ctx.budget}
