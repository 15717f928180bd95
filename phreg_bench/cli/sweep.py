"""`phreg-bench sweep`: run a backbones x methods x tasks x seeds matrix, here or on SLURM (phreg_bench.sweep)."""

from __future__ import annotations

import argparse
from pathlib import Path

from phreg_bench.cli import CliError, note, say


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise CliError(f"expected a comma-separated list of names, got {text!r}")
    return names


def _seeds(text: str | None) -> list[int] | None:
    names = _names(text)
    if names is None:
        return None
    try:
        return [int(name) for name in names]
    except ValueError as error:
        raise CliError(f"--seeds expects comma-separated integers, got {text!r}") from error


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep", help="run a backbones x methods x tasks matrix locally or on SLURM (resumable)",
        description="Expand a matrix into `phreg-bench run` jobs (or torchrun groups) and run them: locally, a "
        "fixed number at a time (one per GPU), or as a SLURM job array through submitit. Finished "
        "combinations are skipped (their config hash names their result files), failed ones are reported "
        "with their log, and the leaderboard is rebuilt at the end. Command-line values override the file.",
    )
    parser.add_argument("sweep_file", nargs="?", type=Path, help="sweep YAML (see README: Many GPUs and clusters)")
    parser.add_argument("--backbones", help="comma-separated backbone names")
    parser.add_argument("--methods", help="comma-separated method names (options: use a sweep file)")
    parser.add_argument("--tasks", help="comma-separated task names")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0)")
    parser.add_argument("--executor", choices=("local", "slurm", "submitit-local"),
                        help="local subprocesses (default), a SLURM job array, or submitit's local executor")
    parser.add_argument("--jobs", type=int, help="local: jobs at once (default: visible GPUs / gpus-per-job, or 1)")
    parser.add_argument("--gpus-per-job", type=int, help="GPUs (= torchrun processes) per job and node (0: CPU)")
    parser.add_argument("--processes-per-job", type=int, help="CPU jobs: torchrun processes per job (default 1)")
    parser.add_argument("--nodes", type=int, help="SLURM: nodes per job (a multi-node torchrun group)")
    parser.add_argument("--partition", help="SLURM partition")
    parser.add_argument("--time", type=int, metavar="MINUTES", help="SLURM time limit per job, minutes")
    parser.add_argument("--results-dir", help="results folder (default: the file's, or ./phreg_results)")
    parser.add_argument("--leaderboard-dir", help="leaderboard folder (default: RESULTS/leaderboard)")
    parser.add_argument("--logs-dir", help="job logs (default: RESULTS/.sweep)")
    parser.add_argument("--data-root", help="datasets folder passed to every job")
    parser.add_argument("--cache-dir", help="caches passed to every job (on a filesystem all nodes share)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                        help="every job's --precision (overrides the file's; unset: run's)")
    parser.add_argument("--batch-size", type=int,
                        help="every job's --batch-size (overrides the file's; unset: run's, 1 on CPU, 8 on CUDA)")
    parser.add_argument("--budget", choices=("full", "quick"),
                        help="probe schedule of every job (overrides the file's; unset: run's, full)")
    parser.add_argument("--limit", type=int, help="evaluate the first N samples in every job (smoke tests; partial)")
    parser.add_argument("--random-init", action="store_true", default=None, help="random weights (smoke tests)")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs (and the SLURM script); run nothing")
    parser.add_argument("--no-wait", action="store_true",
                        help="SLURM: submit and return; rerun the same sweep after the jobs end to collect")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.sweep import Sweep, SweepError, run_sweep

    if args.sweep_file is not None and not args.sweep_file.is_file():
        raise CliError(f"sweep file {args.sweep_file} does not exist")
    overrides = {
        "backbones": _names(args.backbones), "methods": _names(args.methods), "tasks": _names(args.tasks),
        "seeds": _seeds(args.seeds), "executor": args.executor, "jobs": args.jobs, "gpus_per_job": args.gpus_per_job,
        "processes_per_job": args.processes_per_job, "nodes": args.nodes, "results_dir": args.results_dir,
        "leaderboard_dir": args.leaderboard_dir, "logs_dir": args.logs_dir, "data_root": args.data_root,
        "cache_dir": args.cache_dir, "precision": args.precision, "batch_size": args.batch_size,
        "budget": args.budget, "limit": args.limit, "random_init": args.random_init,
    }
    slurm = {key: value for key, value in (("partition", args.partition), ("time_min", args.time))
             if value is not None}
    try:
        sweep = Sweep.load(args.sweep_file, {**overrides, "slurm": slurm or None})
    except SweepError as error:
        raise CliError(str(error)) from None
    if args.no_wait and sweep.executor != "slurm":
        raise CliError("--no-wait applies to --executor slurm only")

    def log(message: str) -> None:  # the planned jobs of a dry run are its output (stdout); else progress (stderr)
        (say if args.dry_run else note)(message)

    states = run_sweep(sweep, dry_run=args.dry_run, wait=not args.no_wait, log=log)
    if args.dry_run:
        return 0
    counts = {status: sum(s.status == status for s in states) for status in ("done", "skipped", "failed", "submitted")}
    say(f"sweep: {counts['done']} done, {counts['skipped']} skipped (already done), {counts['failed']} failed"
        + (f", {counts['submitted']} submitted" if counts["submitted"] else ""))
    for state in states:
        if state.status == "failed":
            say(f"FAILED {state.job.name}: {state.error}; log: ", state.log)
    return 1 if counts["failed"] else 0

