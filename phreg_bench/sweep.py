"""Sweeps: a backbones x methods x tasks x seeds matrix of ``phreg-bench run`` jobs, run here or on SLURM.

Each combination is one job: a ``phreg-bench run`` (one process) or, with ``processes_per_job`` > 1 or
``nodes`` > 1, a ``torchrun`` group of them (:mod:`phreg_bench.runner` shards the images over the ranks).
Executors — no scheduler of our own:

* ``local``: plain subprocesses, a fixed number at a time (``jobs``; with GPUs, one job per
  ``gpus_per_job`` visible GPUs, each job seeing only its own through ``CUDA_VISIBLE_DEVICES``);
  each job's output goes to ``<logs_dir>/<job>.log``.
* ``slurm``: one job array through ``submitit`` (``SlurmExecutor.map_array``; partition, time, GPUs per
  job, ... from the sweep file or the command line). Each array task runs :func:`run_job`, which starts the
  ``torchrun`` group on its node(s) (rendezvous on the first node of the allocation).
* ``submitit-local``: the same submitit path with its ``LocalExecutor`` (every job of a wave at once, on
  this machine): for trying a sweep file before a cluster gets it.

Resumable through the result store: before anything runs, each job's result files are planned
(:func:`phreg_bench.runner.plan`: the config hash names them) and a job whose results all exist is
skipped; a failed job is reported with its log; the leaderboard is rebuilt at the end. ``--dry-run``
prints the jobs (and, for SLURM, the batch script) and runs nothing.

submitit moves each job to its worker as a pickle that this process writes into ``<logs_dir>/submitit``;
that file is the only pickle the project reads, and only ever one it wrote itself.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import queue
import shlex
import subprocess
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from phreg_bench.protocol_settings import _Invalid, convert
from phreg_bench.results.store import slug
from phreg_core.errors import PhregError

EXECUTORS = ("local", "slurm", "submitit-local")
MASTER_PORT_BASE = 29500  # torchrun's default port; a multi-node job adds (job id % 1000) to it


class SweepError(PhregError):
    """A bad sweep file or option (the message names it), or a sweep whose jobs could not be submitted."""


@dataclass(frozen=True)
class MethodChoice:
    """A method name and its ``-o KEY=VALUE`` options (a sweep may list one method with several options)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class SlurmOptions:
    """``sbatch`` settings of each array task (``slurm:`` in the sweep file; see ``man sbatch``)."""

    partition: str | None = None
    time_min: int = 240  # --time, minutes
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 256  # at most this many array tasks at once (submitit's default)
    setup: tuple[str, ...] = ()  # shell lines run before srun (e.g. "module load cuda", "source venv/bin/activate")
    additional: dict[str, Any] = field(default_factory=dict)  # any other #SBATCH flag, e.g. {mail-type: END}


@dataclass(frozen=True, kw_only=True)
class Sweep:
    """A sweep file (YAML) after validation. Every key but ``backbones`` and ``tasks`` has a default."""

    backbones: tuple[str, ...]
    methods: tuple[MethodChoice, ...] = (MethodChoice("raw"),)
    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    protocol: str | None = None
    protocol_overrides: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    random_init: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    batch_size: int | None = None  # default: `phreg-bench run`'s (1 on CPU, 8 on CUDA: cli/_options.py)
    num_workers: int = 0
    budget: Literal["full", "quick"] = "full"
    limit: int | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    results_dir: str = "phreg_results"
    leaderboard_dir: str | None = None  # default <results_dir>/leaderboard
    logs_dir: str | None = None  # default <results_dir>/.sweep
    executor: Literal["local", "slurm", "submitit-local"] = "local"
    gpus_per_job: int = 0  # 0: CPU jobs
    processes_per_job: int | None = None  # torchrun processes per node; default gpus_per_job (or 1 on CPU)
    nodes: int = 1
    jobs: int | None = None  # local: jobs at once; default visible GPUs // gpus_per_job, or 1 on CPU
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    # -- reading --------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any] | None = None) -> Sweep:
        """The sweep file at ``path`` (or none) with ``overrides`` (the command line's values; ``None``: not
        given) on top; a ``slurm`` mapping is merged key by key. Raises :class:`SweepError`."""
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as error:
                raise SweepError(f"sweep file {path}: {error}") from error
            if not isinstance(data, dict):
                raise SweepError(f"sweep file {path}: must be a mapping of keys (backbones, methods, tasks, ...)")
        overrides = {key: value for key, value in (overrides or {}).items() if value is not None}
        if isinstance(overrides.get("slurm"), dict) and isinstance(data.get("slurm"), dict):
            overrides["slurm"] = {**data["slurm"], **overrides["slurm"]}  # --partition keeps the file's time
        data.update(overrides)
        return cls.from_mapping(data, where=str(path) if path else "command line")

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str) -> Sweep:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SweepError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
        for key in ("backbones", "tasks"):
            if not data.get(key):
                raise SweepError(f"{where}: {key!r} is missing or empty (a list of names; or --{key} a,b)")
        values = {key: _convert_field(cls, key, value, where) for key, value in data.items()}
        sweep = cls(**values)
        sweep.validate(where)
        return sweep

    def validate(self, where: str) -> None:
        checks = [
            ("batch_size", self.batch_size is None or self.batch_size > 0, "must be null or > 0"),
            ("num_workers", self.num_workers >= 0, "must be >= 0"),
            ("limit", self.limit is None or self.limit > 0, "must be null or > 0"),
            ("gpus_per_job", self.gpus_per_job >= 0, "must be >= 0 (0: CPU jobs)"),
            ("nodes", self.nodes >= 1, "must be >= 1"),
            ("jobs", self.jobs is None or self.jobs >= 1, "must be null or >= 1"),
            ("processes_per_job", self.processes_per_job is None or self.processes_per_job >= 1,
             "must be null or >= 1"),
            ("processes_per_job", not (self.gpus_per_job and self.processes_per_job not in (None, self.gpus_per_job)),
             f"must equal gpus_per_job ({self.gpus_per_job}): one process per GPU"),
            ("nodes", self.nodes == 1 or self.executor == "slurm", "> 1 needs executor: slurm"),
            ("slurm.time_min", self.slurm.time_min > 0, "must be > 0"),
            ("slurm.array_parallelism", self.slurm.array_parallelism > 0, "must be > 0"),
        ]
        for key, ok, message in checks:
            if not ok:
                raise SweepError(f"{where}: {key}: {message}, got {_value(self, key)!r}")
        known = set().union(*(_setting_keys(task) for task in self.tasks))
        unused = sorted(set(self.protocol_overrides) - known)
        if unused:
            raise SweepError(f"{where}: protocol_overrides: no task of the sweep has a setting {unused[0]!r}; "
                             f"valid keys: {', '.join(sorted(known))}")
        if len(set(self.jobs_names())) != len(self.jobs_names()):
            raise SweepError(f"{where}: the matrix lists a combination twice (backbones, methods, tasks or seeds)")

    def jobs_names(self) -> list[str]:
        return [job.name for job in expand(self)]

    # -- derived --------------------------------------------------------------------------------------
    @property
    def processes(self) -> int:
        return self.processes_per_job or self.gpus_per_job or 1

    @property
    def results(self) -> Path:
        return Path(self.results_dir)

    @property
    def logs(self) -> Path:
        return Path(self.logs_dir) if self.logs_dir else self.results / ".sweep"

    @property
    def leaderboard(self) -> Path:
        return Path(self.leaderboard_dir) if self.leaderboard_dir else self.results / "leaderboard"


def _value(sweep: Sweep, key: str) -> Any:
    head, _, tail = key.partition(".")
    value = getattr(sweep, head)
    return getattr(value, tail) if tail else value


def _convert_field(cls, key: str, value: Any, where: str) -> Any:
    hint = typing.get_type_hints(cls)[key]
    try:
        if key == "methods":
            return _methods(value)
        if key == "slurm":
            if not isinstance(value, dict):
                raise _Invalid(key, f"must be a mapping of sbatch settings, got {value!r}")
            return SlurmOptions(**{k: _convert_field(SlurmOptions, k, v, f"{where}: slurm") for k, v in value.items()
                                   if _known(SlurmOptions, k, f"{where}: slurm")})
        if typing.get_origin(hint) is dict:
            if not isinstance(value, dict):
                raise _Invalid(key, f"must be a mapping, got {value!r}")
            return dict(value)
        if typing.get_origin(hint) is tuple and isinstance(value, (str, int)):
            value = [value]  # one name for a list
        return convert(value, hint, key)
    except _Invalid as error:
        raise SweepError(f"{where}: {error.key}: {error.message}") from None


def _known(cls, key: str, where: str) -> bool:
    names = {f.name for f in dataclasses.fields(cls)}
    if key not in names:
        raise SweepError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(names))}")
    return True


def _methods(value: Any) -> tuple[MethodChoice, ...]:
    items = value if isinstance(value, list) else [value]
    choices = []
    for item in items:
        if isinstance(item, str) and item:
            choices.append(MethodChoice(item))
        elif isinstance(item, dict) and isinstance(item.get("name"), str) and set(item) <= {"name", "options"} \
                and isinstance(item.get("options", {}), dict):
            choices.append(MethodChoice(item["name"], dict(item.get("options", {}))))
        else:
            raise _Invalid("methods", f"each entry must be a name or {{name: NAME, options: {{KEY: VALUE}}}}, "
                           f"got {item!r}")
    if not choices:
        raise _Invalid("methods", "must list at least one method")
    return tuple(choices)


# -- jobs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepJob:
    """One combination: the ``phreg-bench run`` arguments and how many processes / GPUs / nodes run it."""

    name: str
    backbone: str
    method: MethodChoice
    task: str
    seed: int
    argv: tuple[str, ...]  # after ``phreg-bench run``
    processes: int
    gpus: int
    nodes: int


def _assignment(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: `run` parses it back to the same value


def _absolute(path: str | Path | None) -> str | None:
    """Jobs may start elsewhere (a SLURM node, another working directory): paths travel absolute."""
    return None if path is None else str(Path(path).expanduser().absolute())


def _setting_keys(task: str) -> set[str]:
    from phreg_bench.runner import expand_tasks, family_for

    return {key for spec in expand_tasks([task], None) for key in family_for(spec).setting_keys(spec)}


def _overrides_for(task: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The sweep's protocol overrides that ``task`` has (each job runs one task; the others are for other tasks)."""
    keys = _setting_keys(task)
    return {key: value for key, value in overrides.items() if key in keys}


def expand(sweep: Sweep) -> list[SweepJob]:
    """Every combination of the matrix, in a stable order (backbone, method, task, seed)."""
    jobs = []
    for backbone in sweep.backbones:
        for method in sweep.methods:
            for task in sweep.tasks:
                for seed in sweep.seeds:
                    argv = ["--backbone", backbone, "--method", method.name, "--tasks", task, "--seed", str(seed),
                            "--results-dir", _absolute(sweep.results), "--precision", sweep.precision,
                            "--num-workers", str(sweep.num_workers),
                            "--budget", sweep.budget, "--device", "cuda" if sweep.gpus_per_job else "cpu"]
                    for key, value in sorted(method.options.items()):
                        argv += ["--method-option", _assignment(key, value)]
                    for key, value in sorted(_overrides_for(task, sweep.protocol_overrides).items()):
                        argv += ["--protocol-override", _assignment(key, value)]
                    for key, value in sorted(sweep.backbone_options.items()):
                        argv += ["--backbone-option", _assignment(key, value)]
                    for flag, value in (("--protocol", sweep.protocol), ("--batch-size", sweep.batch_size),
                                        ("--limit", sweep.limit),
                                        ("--weights", sweep.weights), ("--data-root", _absolute(sweep.data_root)),
                                        ("--cache-dir", _absolute(sweep.cache_dir))):
                        if value is not None:
                            argv += [flag, str(value)]
                    if sweep.random_init:
                        argv.append("--random-init")
                    digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:8]
                    name = f"{slug(backbone)}__{slug(method.name)}__{slug(task)}__seed{seed}__{digest}"
                    jobs.append(SweepJob(name, backbone, method, task, seed, tuple(argv), sweep.processes,
                                         sweep.gpus_per_job, sweep.nodes))
    return jobs


@dataclass(frozen=True)
class NodeInfo:
    """Where a multi-node job's process runs: this node's rank, the node count, the rendezvous host/port."""

    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int


def job_command(job: SweepJob, node: NodeInfo | None = None, python: str = sys.executable) -> list[str]:
    """The command line of one job on one node: ``phreg-bench run`` or ``torchrun ... -m phreg_bench run``."""
    run = ["-m", "phreg_bench", "run", *job.argv]
    if job.processes == 1 and job.nodes == 1:
        return [python, *run]
    launch = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(job.processes)]
    if job.nodes == 1:
        launch.append("--standalone")
    else:
        if node is None:
            raise SweepError(f"{job.name}: a {job.nodes}-node job runs only inside its SLURM allocation")
        launch += ["--nnodes", str(node.num_nodes), "--node_rank", str(node.node_rank),
                   "--master_addr", node.master_addr, "--master_port", str(node.master_port)]
    return [*launch, *run]


def _node_info() -> NodeInfo:
    import submitit

    env = submitit.JobEnvironment()
    digits = "".join(ch for ch in str(env.job_id) if ch.isdigit()) or "0"
    return NodeInfo(env.node, env.num_nodes, env.hostnames[0], MASTER_PORT_BASE + int(digits[-6:]) % 1000)


def run_job(job: SweepJob) -> int:
    """What a submitit worker runs: the job's command on this node (multi-node: one call per node); a
    one-process job runs ``phreg-bench run`` in the worker itself.

    Raises ``RuntimeError`` (the job fails, its log keeps the output) if the command exits non-zero.
    """
    node = _node_info() if job.nodes > 1 else None
    command = job_command(job, node)
    print("+ " + shlex.join(command), flush=True)
    if job.processes == 1 and job.nodes == 1:  # in this worker process: one interpreter start less
        from phreg_bench.cli import main

        code = main(["run", *job.argv])
    else:
        code = subprocess.run(command, check=False).returncode
    if code != 0:
        raise RuntimeError(f"{job.name}: `{shlex.join(command)}` exited with status {code}")
    return code


# -- planning -----------------------------------------------------------------------------------------
@dataclass
class JobState:
    job: SweepJob
    status: str  # "todo", "skipped", "done", "failed", "submitted"
    results: list[str] = field(default_factory=list)  # planned result files
    log: str | None = None
    error: str | None = None


def plan_jobs(sweep: Sweep, jobs: list[SweepJob], log: Callable[[str], None]) -> list[JobState]:
    """Each job's result files and whether all exist (then it is skipped). Builds each backbone once."""
    import torch

    from phreg_bench.backbones.build import build_backbone
    from phreg_bench.runner import RunRequest, plan
    from phreg_bench.tasks.base import RunContext

    ctx = RunContext(device=torch.device("cuda" if sweep.gpus_per_job else "cpu"), precision=sweep.precision,
                     limit=sweep.limit, budget=sweep.budget)
    states = []
    for backbone_name in sweep.backbones:
        backbone = build_backbone(backbone_name, weights=sweep.weights, random_init=sweep.random_init,
                                  **sweep.backbone_options)
        for job in (j for j in jobs if j.backbone == backbone_name):
            request = RunRequest(backbone=backbone_name, method=job.method.name, method_options=job.method.options,
                                 tasks=[job.task], protocol=sweep.protocol,
                                 protocol_overrides=_overrides_for(job.task, sweep.protocol_overrides),
                                 weights=sweep.weights,
                                 random_init=sweep.random_init, backbone_options=dict(sweep.backbone_options),
                                 results_dir=sweep.results)
            planned = plan(request, dataclasses.replace(ctx, seed=job.seed), backbone=backbone)
            files = [str(p.path) for p in planned if p.path is not None]
            states.append(JobState(job, "skipped" if all(p.done for p in planned) else "todo", files))
        del backbone
    log(f"sweep: {len(states)} jobs, {sum(s.status == 'skipped' for s in states)} already done")
    return states


# -- executors ----------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every GPU torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [item.strip() for item in listed.split(",") if item.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def local_slots(sweep: Sweep) -> list[list[str]]:
    """One entry per job that may run at once: the GPU ids it gets ([] for CPU jobs)."""
    if not sweep.gpus_per_job:
        return [[] for _ in range(sweep.jobs or 1)]
    gpus = visible_gpus()
    count = len(gpus) // sweep.gpus_per_job
    if count == 0:
        raise SweepError(f"gpus_per_job {sweep.gpus_per_job}: only {len(gpus)} GPUs are visible here "
                         f"({', '.join(gpus) or 'none'}); lower it, or use executor: slurm")
    slots = [gpus[i * sweep.gpus_per_job:(i + 1) * sweep.gpus_per_job] for i in range(count)]
    return slots[: sweep.jobs] if sweep.jobs else slots


def run_local(sweep: Sweep, states: list[JobState], log: Callable[[str], None]) -> None:
    """Plain subprocesses, ``len(local_slots)`` at a time; each writes ``<logs>/<job>.log``."""
    slots = local_slots(sweep)
    free: queue.Queue[list[str]] = queue.Queue()
    for slot in slots:
        free.put(slot)
    sweep.logs.mkdir(parents=True, exist_ok=True)

    def launch(state: JobState) -> None:
        slot = free.get()
        try:
            env = dict(os.environ)
            if sweep.gpus_per_job:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
            state.log = str(sweep.logs / f"{state.job.name}.log")
            command = job_command(state.job)
            with open(state.log, "w") as stream:
                stream.write("+ " + shlex.join(command) + "\n")
                stream.flush()
                code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env,
                                      check=False).returncode
            state.status = "done" if code == 0 else "failed"
            state.error = None if code == 0 else f"exit status {code}"
            log(f"{state.status} {state.job.name}" + (f" ({state.error}; log: {state.log})" if code else ""))
        finally:
            free.put(slot)

    todo = [s for s in states if s.status == "todo"]
    log(f"sweep: running {len(todo)} jobs, {len(slots)} at a time")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
        for future in [pool.submit(launch, state) for state in todo]:
            future.result()


def slurm_parameters(sweep: Sweep) -> dict[str, Any]:
    """``submitit.SlurmExecutor.update_parameters`` arguments (sbatch's names) of every array task."""
    options = sweep.slurm
    params: dict[str, Any] = {
        "job_name": "phreg-sweep", "time": options.time_min, "nodes": sweep.nodes, "ntasks_per_node": 1,
        "array_parallelism": options.array_parallelism,
    }
    if sweep.gpus_per_job:
        params["gpus_per_node"] = sweep.gpus_per_job
    for key in ("partition", "cpus_per_task", "account", "qos", "constraint"):
        if getattr(options, key) is not None:
            params[key] = getattr(options, key)
    if options.mem_gb is not None:
        from submitit.slurm.slurm import _convert_mem

        params["mem"] = _convert_mem(options.mem_gb)
    if options.setup:
        params["setup"] = list(options.setup)
    if options.additional:
        params["additional_parameters"] = dict(options.additional)
    return params


def sbatch_preview(sweep: Sweep, count: int) -> str:
    """The batch script submitit would submit for an array of ``count`` jobs (no ``sbatch`` needed).

    submitit exposes no public call for this; its script builder is the one ``SlurmExecutor`` uses.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    folder = _submitit_folder(sweep)
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, map_count=count, **slurm_parameters(sweep))


def _submitit_folder(sweep: Sweep) -> Path:
    return Path(_absolute(sweep.logs)) / "submitit" / "%j"  # submitit puts each job's files in <id>/


def _executor(sweep: Sweep):
    import submitit

    folder = _submitit_folder(sweep)
    if sweep.executor == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as error:  # no srun on this machine
            raise SweepError(f"executor slurm: {error} (run the sweep on a SLURM login node, or --dry-run "
                             "to see the batch script)") from error
        executor.update_parameters(**slurm_parameters(sweep))
        return executor
    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(timeout_min=sweep.slurm.time_min, gpus_per_node=sweep.gpus_per_job,
                               tasks_per_node=1, nodes=1)
    return executor


def run_submitit(sweep: Sweep, states: list[JobState], log: Callable[[str], None], *, wait: bool = True) -> None:
    """One ``map_array`` (SLURM: one job array); waits for every job unless ``wait`` is False."""
    try:
        import submitit  # noqa: F401
    except ImportError as error:
        raise SweepError(f"executor {sweep.executor} needs submitit: pip install 'phreg-bench[slurm]'") from error
    todo = [s for s in states if s.status == "todo"]
    executor = _executor(sweep)
    waves = [todo] if sweep.executor == "slurm" else \
        [todo[i:i + (sweep.jobs or 1)] for i in range(0, len(todo), sweep.jobs or 1)]  # LocalExecutor: all at once
    for wave in waves:
        jobs = executor.map_array(run_job, [state.job for state in wave])
        for state, job in zip(wave, jobs, strict=True):
            state.log = f"{job.paths.stdout} / {job.paths.stderr}"
            state.status = "submitted"
            log(f"submitted {state.job.name}: job {job.job_id}")
        if not wait:
            continue
        for state, job in zip(wave, jobs, strict=True):
            try:
                job.result()
                state.status = "done"
                log(f"done {state.job.name}")
            except Exception as error:  # the job's own failure (its log has the traceback)
                state.status, state.error = "failed", _reason(error)
                log(f"failed {state.job.name} ({state.error}; log: {state.log})")


def _reason(error: Exception) -> str:
    """One line for a failed submitit job: run_job's own message if the job got that far."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in reversed(lines):
        if "exited with status" in line:
            return "exit status " + line.rsplit("exited with status", 1)[1].strip()
    return next((line for line in lines if not line.startswith("-")), type(error).__name__)


# -- the sweep ----------------------------------------------------------------------------------------
def run_sweep(sweep: Sweep, *, dry_run: bool = False, wait: bool = True,
              log: Callable[[str], None] = print) -> list[JobState]:
    """Plan, skip what is done, run the rest, rebuild the leaderboard; returns every job's final state."""
    states = plan_jobs(sweep, expand(sweep), log)
    todo = [s for s in states if s.status == "todo"]
    if dry_run:
        for state in states:
            verb = "skip" if state.status == "skipped" else "run "
            log(f"{verb} {state.job.name}: {shlex.join(job_command(state.job))}")
        if sweep.executor == "slurm" and todo:
            log(f"# batch script of the job array ({len(todo)} tasks):\n{sbatch_preview(sweep, len(todo))}")
        return states
    if todo:
        if sweep.executor == "local":
            run_local(sweep, states, log)
        else:
            run_submitit(sweep, states, log, wait=wait)
    if wait and sweep.results.is_dir() and any(sweep.results.rglob("*__*__*__*.json")):
        from phreg_bench.leaderboard import build_all

        for path in build_all(sweep.results, sweep.leaderboard):
            log(f"leaderboard: {path}")
    return states
