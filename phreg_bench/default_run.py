"""`phreg-bench run` with no arguments: the built-in default, offline on a CPU in well under a minute.

It evaluates the built-in ``tiny-vit`` with several methods on the built-in synthetic task, writes result
files to ``--results-dir`` and the leaderboard to ``--leaderboard-dir`` (default ``<results>/leaderboard``),
and prints where they are. Finished work is skipped on a rerun.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from phreg_bench.cli import console

DEFAULT_BACKBONE = "tiny-vit"
DEFAULT_METHODS = ("raw", "maskclip", "naclip")
DEFAULT_TASKS = ["synthetic/segmentation"]


def run_default(args: argparse.Namespace) -> int:
    from phreg_bench.cli.run import resolve_device
    from phreg_bench.leaderboard import build_all
    from phreg_bench.progress import make_progress, plain_logger
    from phreg_bench.runner import RunRequest, build_backbone, run
    from phreg_bench.tasks.base import RunContext

    results_dir: Path = args.results_dir
    leaderboard_dir: Path = args.leaderboard_dir or results_dir / "leaderboard"
    console.print(f"[bold]built-in default[/bold]: {DEFAULT_BACKBONE} × {', '.join(DEFAULT_METHODS)} "
                  f"on {', '.join(DEFAULT_TASKS)}")
    backbone = build_backbone(DEFAULT_BACKBONE)
    failed = 0
    with make_progress(console=console, transient=True) as progress:
        ctx = RunContext(cache_dir=args.cache_dir, device=resolve_device(args.device), precision=args.precision,
                         batch_size=args.batch_size, seed=args.seed, progress=progress)
        for method in DEFAULT_METHODS:
            request = RunRequest(backbone=DEFAULT_BACKBONE, method=method, tasks=DEFAULT_TASKS,
                                 results_dir=results_dir, overwrite=args.overwrite)
            runs = run(request, ctx, log=plain_logger(progress), backbone=backbone)
            failed += sum(r.status == "failed" for r in runs)
    written = build_all(results_dir, leaderboard_dir)
    console.print(f"results: {results_dir}")
    for path in written:
        console.print(f"leaderboard: {path}")
    return 1 if failed else 0
