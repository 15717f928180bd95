"""Task families are classes, tasks are data.

A task spec (YAML under ``tasks/``; :class:`~phreg_bench.tasks.specs.TaskSpec`, re-exported here) names its
family, dataset reader, split, expected sample count, class file, main metric, protocol presets and a
version. A :class:`TaskFamily` runs a spec on a :class:`~phreg_bench.methods.base.DenseModel` and returns a
:class:`TaskOutcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.base import DenseModel
from phreg_bench.protocol_settings import OVERRIDE_FLAG, ProtocolError, Settings
from phreg_bench.tasks.specs import TaskSpec as TaskSpec  # declared beside its YAML reader (no torch there)
from phreg_core.distributed import DistEnv


@dataclass
class RunContext:
    """Everything a task needs besides the model and the spec."""

    data_root: Path | None = None
    cache_dir: Path = Path(".phreg_cache")
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # fp32 | bf16 | fp16 that runs: the runner sets it on the model (DenseModel.set_precision)
    batch_size: int = 8
    num_workers: int = 0
    limit: int | None = None  # evaluate only the first N samples (the result is marked partial)
    seed: int = 0
    budget: str = "full"  # probe schedules: "full" (paper) or "quick"
    progress: Any = None  # a rich.progress.Progress (see phreg_bench.progress.track); None: silent
    options: dict[str, Any] = field(default_factory=dict)  # family-specific extras
    # the torchrun process group (phreg_core.distributed.setup); the default is one process. Under torchrun,
    # families shard their images over ranks and reduce metrics exactly; only rank 0 writes results.
    dist: DistEnv = field(default_factory=DistEnv)


@dataclass
class TaskOutcome:
    """What a task run measured: the family's hand-off to the result record
    (:meth:`phreg_bench.results.records.ResultRecord.measured` turns it into ``metrics``, ``status.num_samples``,
    ``timings.phases`` and ``extra``)."""

    main_metric: str
    metrics: dict[str, float]  # includes the main metric
    num_samples: int
    per_class: dict[str, float | None] = field(default_factory=dict)  # None: class absent (NaN in mmseg)
    # facts about the run, recorded as the record's ``extra`` (informative: neither hashed nor scored), e.g.
    # feature-cache hits, resolved sizes, skipped files; strict JSON values only
    extra: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase


class TaskFamily:
    """Base class of ``ovseg``, ``linseg``, ``depth`` and the built-in synthetic families.

    ``settings_class`` (a :class:`~phreg_bench.protocol_settings.NamedSettings` subclass) declares every protocol
    setting with its type and range. A family without one (a third-party family) accepts exactly the keys
    of its presets, unconverted.
    """

    name: str = ""
    needs_text: bool = False
    settings_class: type[Settings] | None = None
    variant_keys: tuple[str, ...] = ()  # the settings :meth:`row_variant` names (not listed again as overrides)

    def applies_to(self, backbone: Backbone) -> bool:
        return backbone.has_text or not self.needs_text

    def preset(self, spec: TaskSpec, protocol: str | None, ctx: RunContext) -> tuple[str, dict[str, Any]]:
        """The preset's name and values before overrides (probe families flatten their budget here)."""
        return spec.protocol(protocol)

    def fixed_settings(self, ctx: RunContext) -> dict[str, Any]:
        """Settings the tool sets from the run (not overridable), e.g. the probe ``budget``."""
        return {}

    def setting_keys(self, spec: TaskSpec, protocol: str | None = None) -> list[str]:
        """What ``--protocol-override`` accepts for this task."""
        if self.settings_class is not None:
            return self.settings_class.keys()
        return sorted(spec.protocol(protocol)[1])

    def resolve_settings(self, spec: TaskSpec, protocol: str | None, ctx: RunContext,
                         overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The full resolved protocol settings (preset + overrides, validated) recorded in the result and hashed.

        Raises :class:`~phreg_bench.protocol_settings.ProtocolError` for an unknown protocol or key, or a value
        of the wrong type or range.
        """
        name, preset = self.preset(spec, protocol, ctx)
        overrides = dict(overrides or {})
        fixed = {"name": name, **self.fixed_settings(ctx)}
        if self.settings_class is None:
            unknown = sorted(set(overrides) - set(preset))
            if unknown:
                raise ProtocolError(f"{OVERRIDE_FLAG} {unknown[0]}: {spec.name} (protocol {name!r}) has no setting "
                                    f"{unknown[0]!r}; valid keys: {', '.join(sorted(preset))}")
            return {**preset, **overrides, **fixed}
        return self.settings_class.resolve(task=spec.name, protocol=name, preset=preset, overrides=overrides,
                                           fixed=fixed).to_dict()

    def row_variant(self, settings: dict[str, Any]) -> str | None:
        """What keeps a leaderboard row of this family apart from the same run under another schedule (probe
        families: budget and feature mode, e.g. ``quick/full``), from resolved settings; recorded as the
        result's ``protocol.variant``. ``None``: the family has no variant."""
        return None

    def recorded_preset(self, spec: TaskSpec, settings: dict[str, Any]) -> dict[str, Any]:
        """The resolved preset (no overrides) that recorded ``settings`` started from, so that a reader can
        tell the overrides apart. Raises :class:`~phreg_bench.protocol_settings.ProtocolError` like
        :meth:`resolve_settings`."""
        return self.resolve_settings(spec, settings["name"], RunContext())

    def check_settings(self, settings: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
        """Re-validate resolved settings at the start of :meth:`run` (a direct caller may have edited them)."""
        if self.settings_class is None:
            return dict(settings)
        return self.settings_class.from_dict(settings, where=f"{spec.name} settings").to_dict()

    def run(self, model: DenseModel, spec: TaskSpec, settings: dict[str, Any], ctx: RunContext) -> TaskOutcome:
        """Evaluate ``model`` on ``spec`` with resolved protocol ``settings`` (:meth:`resolve_settings`).

        ``model`` is the method-wrapped backbone in eval mode on ``ctx.device``, already set to the run's
        precision (:meth:`DenseModel.set_precision`): a family reads only what :class:`DenseModel` exposes
        (``forward_tokens``, ``normalize``, ``patch_size``, ``embed_dim``, ``encode_text``, ...), never the
        backbone behind it, and does not autocast (heads, losses and metrics run in float32). Returns the
        metrics (the main one included) and the number of samples evaluated; raises a
        :class:`~phreg_core.errors.PhregError` subclass for bad data or settings.
        """
        raise NotImplementedError
