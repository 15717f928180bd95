"""Run backbone × method × tasks, skipping finished work, writing one result file per task."""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from phreg_bench.backbones.base import Backbone
from phreg_bench.backbones.build import build_backbone
from phreg_bench.datasets.base import resolve_data_root
from phreg_bench.precision import resolve_precision
from phreg_bench.protocol_settings import OVERRIDE_FLAG, PROTOCOL_FLAG, ProtocolError
from phreg_bench.registries import DATASETS, METHODS, TASK_FAMILIES, TASKS
from phreg_bench.results.provenance import provenance, utc_now
from phreg_bench.results.records import (
    BackboneRef,
    MethodRef,
    Protocol,
    ResultRecord,
    RunIdentity,
    TaskRef,
    Timings,
    format_metric,
)
from phreg_bench.results.store import OVERWRITE_MODES, ResultStore
from phreg_bench.tasks.base import RunContext, TaskFamily, TaskOutcome, TaskSpec
from phreg_core.distributed import broadcast_flag
from phreg_core.errors import ConfigError, PhregError


class RankFailure(PhregError, RuntimeError):
    """Under ``torchrun``, a task failed on one rank: the whole group stops (the others cannot go on alone)."""


@dataclass
class RunRequest:
    """What `phreg-bench run` was asked to do."""

    backbone: str
    method: str = "raw"
    method_options: dict[str, Any] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    protocol: str | None = None
    protocol_overrides: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    random_init: bool = False
    backbone_options: dict[str, Any] = field(default_factory=dict)
    results_dir: Path = Path("phreg_results")
    overwrite: str = "only-missing"


@dataclass
class TaskRun:
    task: str
    status: str  # "done", "skipped" or "failed"
    path: Path | None
    main_metric: str | None = None
    value: float | None = None
    error: str | None = None


def family_for(spec: TaskSpec) -> TaskFamily:
    return TASK_FAMILIES.get(spec.family)()


def expand_tasks(names: list[str], backbone: Backbone | None) -> list[TaskSpec]:
    """Full names stay; a short name (``voc``) expands to every family that applies to the backbone."""
    specs: list[TaskSpec] = []
    for name in names:
        if "/" in name or ":" in name or name in TASKS:
            specs.append(TASKS.get(name))  # a registered name, or a third-party ``package.module:SPEC`` (checked)
            continue
        named = [e.target for e in TASKS if e.metadata.get("short_name") == name and isinstance(e.target, TaskSpec)]
        if not named:
            TASKS.canonical(name)  # raises with a suggestion
        matches = [spec for spec in named if backbone is None or family_for(spec).applies_to(backbone)]
        if not matches:
            raise ConfigError(f"no task named {name!r} applies to backbone {backbone.name!r}: "
                             f"{', '.join(spec.name for spec in named)} (needs a text tower)")
        specs.extend(sorted(matches, key=lambda spec: spec.name))
    unique = {spec.name: spec for spec in specs}
    return list(unique.values())


def resolve_task_settings(specs: list[TaskSpec], request: RunRequest, ctx: RunContext,
                          log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Resolved, validated protocol settings of every task in ``specs`` (by task name).

    ``--protocol NAME`` must be a preset of at least one task (the others use their default, with a note);
    each ``--protocol-override KEY`` must be a setting of at least one task's family and applies to the tasks
    that have it (the others are noted). Raises :class:`ProtocolError` naming the flag and listing the valid
    names or keys; the runner calls this before any model is built.
    """
    if not specs:
        return {}
    if request.protocol and not any(request.protocol in spec.protocols for spec in specs):
        known = sorted({name for spec in specs for name in spec.protocols})
        raise ProtocolError(f"{PROTOCOL_FLAG} {request.protocol}: no requested task has this protocol; "
                            f"valid: {', '.join(known)}")
    plans = []
    for spec in specs:
        family = family_for(spec)
        protocol = request.protocol if request.protocol in spec.protocols else None
        plans.append((spec, family, protocol, set(family.setting_keys(spec, protocol))))
    overrides = request.protocol_overrides
    for key in overrides:
        if any(key in keys for *_, keys in plans):
            continue
        if len(plans) == 1:  # the family's own message (a reserved key says which option sets it)
            spec, family, protocol, _ = plans[0]
            family.resolve_settings(spec, protocol, ctx, {key: overrides[key]})
        valid = {}
        for spec, _, _, keys in plans:
            valid.setdefault(spec.family, keys)
        listed = "; ".join(f"{family}: {', '.join(sorted(keys))}" for family, keys in valid.items())
        raise ProtocolError(f"{OVERRIDE_FLAG} {key}: none of the tasks ({', '.join(s.name for s in specs)}) has "
                            f"this setting; valid keys: {listed}")
    resolved = {}
    for spec, family, protocol, keys in plans:
        if request.protocol and protocol is None:
            log(f"note: {spec.name} has no protocol {request.protocol!r}; using {spec.default_protocol!r}")
        ignored = sorted(set(overrides) - keys)
        if ignored:
            log(f"note: {spec.name} has no setting {', '.join(ignored)}; those overrides apply to the other tasks")
        applicable = {key: value for key, value in overrides.items() if key in keys}
        resolved[spec.name] = family.resolve_settings(spec, protocol, ctx, applicable)
    return resolved


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(
    request: RunRequest,
    ctx: RunContext,
    *,
    log: Callable[[str], None] = print,
    backbone: Backbone | None = None,
) -> list[TaskRun]:
    """Run every requested task; failures of one task are reported and the others still run.

    Under ``torchrun`` (``ctx.dist``) every rank runs this with the same request: the families shard the
    images and reduce the metrics; rank 0 alone logs, decides what is skipped and writes the result files. A
    task that fails on any rank raises :class:`RankFailure` there, which ends the group (``torchrun`` stops
    the other ranks); results written before stay, and a rerun resumes from the first missing one.
    """
    if not ctx.dist.is_main:
        log = _silent
    ctx, backbone, specs, resolved, model = _prepare(request, ctx, log, backbone)
    if any(spec.dataset in DATASETS and family_for(spec).applies_to(backbone) for spec in specs):
        resolve_data_root(ctx.data_root)  # a dataset on disk: its folder must exist before any task starts
    model.to(ctx.device).eval()
    store = ResultStore(request.results_dir)
    if ctx.dist.is_main:
        store.remove_stale_temp_files()
    runs = []
    for spec in specs:
        family = family_for(spec)
        if not family.applies_to(backbone):
            log(f"skip {spec.name}: needs a text tower, {backbone.name!r} has none")
            runs.append(TaskRun(spec.name, "skipped", None, error="not applicable"))
            continue
        runs.append(_run_task(spec, family, model, resolved[spec.name], ctx, store, request.overwrite, log))
    return runs


def _prepare(request: RunRequest, ctx: RunContext, log: Callable[[str], None], backbone: Backbone | None):
    """Validate the request and build what it runs: ``(ctx, backbone, specs, resolved settings, model)``."""
    if request.overwrite not in OVERWRITE_MODES:
        raise ConfigError(f"--overwrite must be one of {OVERWRITE_MODES}, got {request.overwrite!r}")
    method_factory = METHODS.get(request.method)  # fail on bad names before any model is built
    precision = resolve_precision(ctx.device, ctx.precision)
    if precision != ctx.precision:
        log(f"note: no {ctx.precision} autocast on {ctx.device.type}; running and recording {precision}")
    ctx = dataclasses.replace(ctx, precision=precision)
    resolve_task_settings(expand_tasks(request.tasks, None), request, ctx, log=lambda message: None)
    backbone = backbone or build_backbone(request.backbone, weights=request.weights,
                                          random_init=request.random_init, **request.backbone_options)
    specs = expand_tasks(request.tasks, backbone)
    log(f"tasks: {', '.join(spec.name for spec in specs)}")
    resolved = resolve_task_settings([s for s in specs if family_for(s).applies_to(backbone)], request, ctx, log)
    model = method_factory(backbone, **request.method_options).set_precision(precision)
    return ctx, backbone, specs, resolved, model


@dataclass
class PlannedTask:
    """Where a task's result goes and whether it is already there (what ``sweep`` skips on)."""

    task: str
    path: Path | None  # None: the task does not apply to the backbone (no text tower)
    done: bool


def plan(request: RunRequest, ctx: RunContext, *, backbone: Backbone | None = None) -> list[PlannedTask]:
    """The result file of each task of ``request`` and whether a valid one exists, without running anything.

    Builds the backbone and method (their identity enters the config hash) but not on ``ctx.device``, and
    reads no data. ``ctx.device`` only chooses the precision that would run (pass the job's device type).
    """
    ctx, backbone, specs, resolved, model = _prepare(request, ctx, _silent, backbone)
    store = ResultStore(request.results_dir)
    planned = []
    for spec in specs:
        if not family_for(spec).applies_to(backbone):
            planned.append(PlannedTask(spec.name, None, True))
            continue
        path = store.path_for(_identity(spec, family_for(spec), model, resolved[spec.name], ctx))
        planned.append(PlannedTask(spec.name, path, store.is_done(path)))
    return planned


def _identity(spec: TaskSpec, family: TaskFamily, model, settings: dict[str, Any], ctx: RunContext) -> RunIdentity:
    """The task's result identity (its config hash names the file)."""
    return RunIdentity(
        task=TaskRef(spec.name, spec.family, spec.version, spec.spec_hash()),
        backbone=BackboneRef(model.backbone.describe()),
        method=MethodRef(**model.describe()),
        protocol=Protocol(settings["name"], settings, family.row_variant(settings)),
        seed=ctx.seed, limit=ctx.limit, precision=ctx.precision)


def _run_task(spec: TaskSpec, family: TaskFamily, model, settings: dict[str, Any], ctx: RunContext,
              store: ResultStore, overwrite: str, log: Callable[[str], None]) -> TaskRun:
    identity = _identity(spec, family, model, settings, ctx)
    path = store.path_for(identity)
    env = ctx.dist
    # rank 0 decides (all ranks must take the same branch, whatever each one's view of the folder)
    if broadcast_flag(env, env.is_main and overwrite == "only-missing" and store.is_done(path)):
        log(f"skip {spec.name}: already done ({path})")
        return TaskRun(spec.name, "skipped", path)
    started_at, start = utc_now(), time.perf_counter()
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    torch.manual_seed(ctx.seed)

    def record(outcome: TaskOutcome | None = None, error: Exception | None = None) -> ResultRecord:
        """The result record of this run so far: finished (``outcome``) or failed (``error``)."""
        elapsed = time.perf_counter() - start
        timings = Timings(total_s=round(elapsed, 3), phases=dict(outcome.phases) if outcome else {},
                          images_per_s=round(outcome.num_samples / elapsed, 3) if outcome and elapsed > 0 else None,
                          peak_memory_mb=round(_peak_memory_mb(ctx.device), 1), device=str(ctx.device),
                          precision=ctx.precision, processes=env.world_size)
        return ResultRecord.measured(identity, outcome=outcome, error=error, higher_is_better=spec.higher_is_better,
                                     expected_samples=spec.num_samples, timings=timings,
                                     provenance=provenance(sys.argv, started_at, utc_now()))

    try:  # no autocast here: the model autocasts only its own forward (DenseModel.set_precision)
        outcome = family.run(model, spec, settings, ctx)
    except Exception as error:  # one broken task must not lose the others' results
        if env.distributed:  # the other ranks may be waiting in a collective for this one: stop the group
            # no error record: rank 0's error is often only the echo of another rank's, and a rerun resumes
            traceback.print_exc(file=sys.stderr)
            raise RankFailure(f"rank {env.rank} of {env.world_size}: {spec.name} failed: "
                              f"{type(error).__name__}: {error}") from error
        store.write(record(error=error))  # an error record (atomic): `results show` lists it, a rerun replaces it
        log(f"FAILED {spec.name}: {type(error).__name__}: {error}")
        if os.environ.get("PHREG_DEBUG", "") not in ("", "0"):
            log(traceback.format_exc().rstrip())
        return TaskRun(spec.name, "failed", None, error=f"{type(error).__name__}: {error}")
    result = record(outcome=outcome)
    if env.is_main:  # every rank holds the reduced metrics; one writes (atomically)
        path = store.write(result)
    score = result.metrics.score
    log(f"done {spec.name}: {score.metric} = {format_metric(score.value)} -> {path}")
    return TaskRun(spec.name, "done", path, score.metric, score.value)
