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

    variant_keys = ("budget", "train_features")

    def row_variant(self, settings: dict[str, Any]) -> str | None:
        """``<budget>`` or ``<budget>/<train_features>``: runs on another schedule or feature mode are other rows."""
        variant = str(settings["budget"])
        return f"{variant}/{settings['train_features']}" if settings.get("train_features") else variant

    def recorded_preset(self, spec: TaskSpec, settings: dict[str, Any]) -> dict[str, Any]:
        return self.resolve_settings(spec, settings["name"], RunContext(budget=settings.get("budget", "full")))
