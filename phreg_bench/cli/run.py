"""`phreg-bench run`: evaluate a backbone × method on tasks; with no arguments, the built-in default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from phreg_bench.cli import CliError, console


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML scalars)."""
    parsed: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} expects KEY=VALUE, got {item!r}")
        parsed[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
    return parsed


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that run models (device, precision, batch size, ...)."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="autocast dtype of the backbone forward only; heads, losses and metrics stay fp32. "
                        "Part of the result identity (default: fp32)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images (ovseg: sliding windows) per forward pass (default: 1 on CPU, 8 on CUDA; on "
                        "2 CPU cores 8 windows at a time took 1.16-1.26x as long as one at a time for ViT-B/16, "
                        "measured by benchmarks/window_batch.py)")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loading workers (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (recorded; default: 0)")


DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 8}  # per device type, from benchmarks/window_batch.py (see --batch-size)


def resolve_batch_size(value: int | None, device: torch.device) -> int:
    """``--batch-size``, or the default for ``device``'s type (8 for types not measured)."""
    if value is not None:
        if value < 1:
            raise CliError(f"--batch-size must be >= 1, got {value}")
        return value
    return DEFAULT_BATCH_SIZE.get(device.type, 8)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


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
    parser.add_argument("--adapter", type=Path, help="PH-Reg adapter file (implies --method phreg)")
    parser.add_argument("--tasks", "-t", help="comma-separated task names; short names (voc, ade, nyu) "
                        "expand to every family that applies to the backbone")
    parser.add_argument("--suite", help="run every task of a suite (see `ls suites`)")
    parser.add_argument("--protocol", "-p", help="protocol preset (default: each task's own default)")
    parser.add_argument("--protocol-override", action="append", metavar="KEY=VALUE",
                        help="override one protocol setting (validated, recorded and hashed; an unknown key is "
                        "refused with the valid ones), repeatable")
    parser.add_argument("--data-root", type=Path, default=os.environ.get("PHREG_DATA"),
                        help="datasets folder (default: $PHREG_DATA)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples (result marked partial)")
    parser.add_argument("--weights", help="local weights file (safetensors, .pt/.bin state dict, CLIP checkpoint)")
    parser.add_argument("--random-init", action="store_true", help="random weights (smoke tests, no download)")
    parser.add_argument("--backbone-option", action="append", metavar="KEY=VALUE",
                        help="backbone factory option, repeatable")
    parser.add_argument("--budget", default="full", choices=("full", "quick"),
                        help="probe training schedule: the paper's (full) or a short one (quick)")
    parser.add_argument("--results-dir", type=Path, default=Path("phreg_results"),
                        help="where result files go (default: ./phreg_results)")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("PHREG_CACHE", ".phreg_cache")),
                        help="text-embedding / feature caches (default: $PHREG_CACHE or ./.phreg_cache)")
    parser.add_argument("--overwrite", default="only-missing", choices=("only-missing", "always"),
                        help="only-missing (default) skips tasks whose result exists; always recomputes")
    parser.add_argument("--leaderboard-dir", type=Path, default=None,
                        help="also rebuild the leaderboard of the results folder here")
    add_runtime_options(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.progress import make_progress, plain_logger
    from phreg_bench.runner import RunRequest, run
    from phreg_bench.tasks.base import RunContext

    if args.backbone is None and args.tasks is None and args.suite is None:
        from phreg_bench.default_run import run_default

        return run_default(args)
    if args.backbone is None:
        raise CliError("--backbone is required when --tasks or --suite is given (see `phreg-bench ls backbones`)")
    tasks = [name.strip() for name in (args.tasks or "").split(",") if name.strip()]
    if args.suite:
        from phreg_bench.registries import SUITES

        tasks += list(SUITES.get(args.suite)["tasks"])
    if not tasks:
        raise CliError("no tasks: pass --tasks or --suite (see `phreg-bench ls tasks`)")
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be a positive number of samples")
    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise CliError(f"--data-root {args.data_root} is not a folder")
    method_options = parse_assignments(args.method_option, "--method-option")
    method = args.method or "raw"
    if args.adapter is not None:
        method = args.method or "phreg"
        method_options["adapter"] = str(args.adapter)
    request = RunRequest(
        backbone=args.backbone, method=method, method_options=method_options, tasks=tasks,
        protocol=args.protocol, protocol_overrides=parse_assignments(args.protocol_override, "--protocol-override"),
        weights=args.weights, random_init=args.random_init,
        backbone_options=parse_assignments(args.backbone_option, "--backbone-option"),
        results_dir=args.results_dir, overwrite=args.overwrite,
    )
    with make_progress(console=console, transient=True) as progress:
        device = resolve_device(args.device)
        ctx = RunContext(
            data_root=Path(args.data_root) if args.data_root else None, cache_dir=args.cache_dir,
            device=device, precision=args.precision, batch_size=resolve_batch_size(args.batch_size, device),
            num_workers=args.num_workers, limit=args.limit, seed=args.seed, budget=args.budget,
            progress=progress,
        )
        runs = run(request, ctx, log=plain_logger(progress))
    if args.leaderboard_dir is not None:
        from phreg_bench.leaderboard import build_all

        for path in build_all(args.results_dir, args.leaderboard_dir):
            console.print(f"leaderboard: {path}")
    failed = [r for r in runs if r.status == "failed"]
    console.print(f"results in {args.results_dir}: {sum(r.status == 'done' for r in runs)} done, "
                  f"{sum(r.status == 'skipped' for r in runs)} skipped, {len(failed)} failed")
    return 1 if failed else 0
