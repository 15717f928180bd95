"""`phreg-bench run`: evaluate a backbone × method on tasks; with no arguments, the built-in default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from phreg_bench.cli import CliError, OptionError, add_row, console, make_table, note, print_table, say
from phreg_bench.cli._options import (
    add_pos_resample_option,
    add_runtime_options,
    parse_assignments,
    positive_int,
    resolve_batch_size,
    resolve_device,
    with_pos_resample,
)


def join_process_group(device: str):
    """:func:`phreg_core.distributed.setup` after checking ``--device``: under ``torchrun`` (``WORLD_SIZE`` > 1)
    each rank takes ``cuda:LOCAL_RANK`` (NCCL) when CUDA is there, else the CPU (gloo)."""
    from phreg_core.distributed import DistEnv, setup

    world = int(os.environ.get("WORLD_SIZE", "1"))
    resolved = resolve_device(device)
    if world <= 1:
        return DistEnv(device=resolved)
    if resolved.type == "cuda" and resolved.index is not None:
        raise CliError(f"--device {device}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda "
                       "(or auto) and choose GPUs with CUDA_VISIBLE_DEVICES")
    return setup(resolved.type)


def progress_for(env):
    """Bars in one process (plain lines outside a terminal); under torchrun plain lines from rank 0
    (:class:`phreg_core.progress.PlainProgress`), prefixed with the rank."""
    from phreg_bench.progress import make_progress
    from phreg_core.progress import PlainProgress

    if not env.distributed:
        return make_progress(console=console, transient=True)
    return PlainProgress(stream=console.file, console=console, prefix=f"[rank {env.rank}/{env.world_size}] ")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="evaluate a backbone × method on tasks (no arguments: the built-in offline default)",
        description="Evaluate BACKBONE × METHOD on TASKS and write one result file per task. With no "
        "--backbone and no --tasks, runs the built-in default (synthetic world, CPU, offline).",
    )
    parser.add_argument("--backbone", "-b", help="registered name, alias, timm:<name>, open_clip:<arch>/<tag>, "
                        "hf-hub:<repo> or package.module:factory")
    parser.add_argument("--method", "-m", default=None, help="method name (default: raw; see `ls methods`)")
    parser.add_argument("-o", "--method-option", action="append", metavar="KEY=VALUE",
                        help="method option, repeatable (e.g. -o views=10 -o inner=naclip)")
    parser.add_argument("--adapter", metavar="PATH_OR_HUB",
                        help="PH-Reg adapter: an adapter file or its folder (written by `phreg-bench distill` or "
                        "`adapter import`), or hf-hub:<user>/<repo>[/<folder>][@<revision>]; implies --method phreg")
    parser.add_argument("--tasks", "-t", help="comma-separated task names; short names (voc, ade, nyu) "
                        "expand to every family that applies to the backbone")
    parser.add_argument("--suite", help="run every task of a suite (see `ls suites`)")
    parser.add_argument("--protocol", "-p", help="protocol preset (default: each task's own default)")
    parser.add_argument("--protocol-override", action="append", metavar="KEY=VALUE",
                        help="override one protocol setting (validated, recorded and hashed; an unknown key is "
                        "refused with the valid ones), repeatable")
    parser.add_argument("--data-root", type=Path, default=os.environ.get("PHREG_DATA"),
                        help="datasets folder (default: $PHREG_DATA)")
    parser.add_argument("--limit", type=positive_int,
                        help="evaluate only the first N samples (result marked partial)")
    parser.add_argument("--weights", help="local weights file (safetensors, .pt/.bin state dict, CLIP checkpoint)")
    parser.add_argument("--random-init", action="store_true", help="random weights (smoke tests, no download)")
    parser.add_argument("--backbone-option", action="append", metavar="KEY=VALUE",
                        help="backbone factory option, repeatable")
    add_pos_resample_option(parser)
    parser.add_argument("--budget", default="full", choices=("full", "quick"),
                        help="probe training schedule: the paper's (full) or a short one (quick) (default: full)")
    parser.add_argument("--results-dir", type=Path, default=Path("phreg_results"),
                        help="where result files go (default: ./phreg_results)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("PHREG_CACHE", ".phreg_cache")),
                        help="text-embedding / feature caches (default: $PHREG_CACHE or ./.phreg_cache)")
    parser.add_argument("--overwrite", default="only-missing", choices=("only-missing", "always"),
                        help="only-missing (default) skips tasks whose result exists; always recomputes")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="ovseg: skip unreadable or invalid dataset files and count them (the result is marked "
                        "partial) instead of stopping at the first one")
    parser.add_argument("--leaderboard-dir", type=Path, default=None,
                        help="also rebuild the leaderboard of the results folder here")
    add_runtime_options(parser)
    parser.set_defaults(handler=handle)


# Options the built-in default (no --backbone, --tasks or --suite) does not use: refused, not ignored.
# dest -> (flag, parser default)
DEFAULT_RUN_IGNORES: dict[str, tuple[str, Any]] = {
    "method": ("--method", None), "method_option": ("--method-option", None), "adapter": ("--adapter", None),
    "protocol": ("--protocol", None), "protocol_override": ("--protocol-override", None), "limit": ("--limit", None),
    "weights": ("--weights", None), "random_init": ("--random-init", False),
    "backbone_option": ("--backbone-option", None), "budget": ("--budget", "full"),
}


def check_default_run(args: argparse.Namespace) -> None:
    """Refuse the options the built-in default would not use (it runs fixed models on the synthetic world)."""
    given = [flag for dest, (flag, default) in DEFAULT_RUN_IGNORES.items() if getattr(args, dest) != default]
    environment = os.environ.get("PHREG_DATA")
    if args.data_root is not None and args.data_root != (Path(environment) if environment else None):
        given.append("--data-root")
    if given:
        raise OptionError(f"the built-in default (no --backbone/--tasks/--suite) does not use {', '.join(given)}; "
                          "pass --backbone and --tasks (or --suite) to run your own evaluation")


def check_run(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """Every check of `phreg-bench run` that needs more than one option; returns ``(method, method options)``.

    Runs before any model is built; each error names the option.
    """
    from phreg_bench.methods.options import validate_method_options
    from phreg_bench.registries import METHODS

    if args.backbone is None:
        raise OptionError("--backbone is required when --tasks or --suite is given (see `phreg-bench ls backbones`)")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        environment = os.environ.get("PHREG_DATA")
        source = "$PHREG_DATA" if environment and Path(environment) == args.data_root else "--data-root"
        raise OptionError(f"{source} {args.data_root} is not a folder; pass the folder holding the datasets")
    method_options = parse_assignments(args.method_option, "--method-option")
    method = args.method or "raw"
    if args.adapter is not None:
        if args.method is not None and METHODS.canonical(args.method) != "phreg":
            raise OptionError(f"--adapter implies --method phreg and cannot be combined with --method {args.method}; "
                              "drop --method (a wrapper takes the adapter as its inner method's option: "
                              "-m tta -o inner=phreg -o adapter=PATH)")
        method = "phreg"
        method_options["adapter"] = args.adapter
    validate_method_options(method, method_options)
    return method, method_options


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.progress import plain_logger
    from phreg_bench.runner import RunRequest, run
    from phreg_bench.tasks.base import RunContext
    from phreg_core.distributed import teardown

    if args.pos_resample is not None and args.backbone is None:
        raise CliError("--pos-resample needs --backbone (the built-in default run keeps its models' own policy)")
    if args.backbone is None and args.tasks is None and args.suite is None:
        from phreg_bench.cli._default import run_default

        check_default_run(args)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise CliError("the built-in default run is one process; start it without torchrun")
        return run_default(args, resolve_device(args.device))
    method, method_options = check_run(args)
    tasks = [name.strip() for name in (args.tasks or "").split(",") if name.strip()]
    if args.suite:
        from phreg_bench.registries import SUITES

        tasks += list(SUITES.get(args.suite)["tasks"])
    if not tasks:
        raise OptionError("no tasks: pass --tasks or --suite (see `phreg-bench ls tasks`)")
    request = RunRequest(
        backbone=args.backbone, method=method, method_options=method_options, tasks=tasks,
        protocol=args.protocol, protocol_overrides=parse_assignments(args.protocol_override, "--protocol-override"),
        weights=args.weights, random_init=args.random_init,
        backbone_options=with_pos_resample(parse_assignments(args.backbone_option, "--backbone-option"),
                                           args.pos_resample),
        results_dir=args.results_dir, overwrite=args.overwrite,
    )
    env = join_process_group(args.device)  # one process unless started by torchrun
    try:
        with progress_for(env) as progress:
            ctx = RunContext(
                data_root=Path(args.data_root) if args.data_root else None, cache_dir=args.cache_dir,
                device=env.device, precision=args.precision,
                batch_size=resolve_batch_size(args.batch_size, env.device),
                num_workers=args.num_workers, limit=args.limit, seed=args.seed, budget=args.budget,
                progress=progress if env.is_main else None, dist=env,
                options={"skip_corrupt": True} if args.skip_corrupt else {},
            )
            runs = run(request, ctx, log=plain_logger(progress))
    finally:
        teardown(env)
    if not env.is_main:  # rank 0 alone reports and builds the leaderboard
        return 0
    print_runs(runs)
    if args.leaderboard_dir is not None:
        from phreg_bench.leaderboard import build_all

        for path in build_all(args.results_dir, args.leaderboard_dir):
            say("leaderboard: ", path)
    failed = [r for r in runs if r.status == "failed"]
    say(f"results in {args.results_dir}: {sum(r.status == 'done' for r in runs)} done, "
        f"{sum(r.status == 'skipped' for r in runs)} skipped, {len(failed)} failed")
    if failed:
        note("failed tasks are listed above; PHREG_DEBUG=1 shows their tracebacks", style="yellow")
    return 1 if failed else 0


def print_runs(runs) -> None:
    """One row per task run (standard output): task, status, main metric and value, result file or error."""
    from phreg_bench.results.records import format_metric

    if not runs:
        return
    table = make_table(None, ("task", "status", "metric", "value", "result / error"))
    for r in runs:
        value = "" if r.value is None else format_metric(r.value)
        add_row(table, r.task, r.status, r.main_metric or "", value, r.path if r.path is not None else r.error or "")
    print_table(table)
