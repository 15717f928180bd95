"""`phreg-bench leaderboard`: JSON + Markdown + HTML boards built from result files only."""

from __future__ import annotations

import argparse
from pathlib import Path

from phreg_bench.cli import say


def register(subparsers) -> None:
    parser = subparsers.add_parser("leaderboard", help="build leaderboards from result files")
    parser.add_argument("--results-dir", type=Path, action="append",
                        help="results folder, repeatable (default: ./phreg_results)")
    parser.add_argument("--suite", help="build only this suite (default: every suite with results)")
    parser.add_argument("--out", type=Path, default=Path("leaderboards"),
                        help="output folder (default: ./leaderboards); leaderboard files of an earlier build that "
                        "this one does not write are removed")
    parser.add_argument("--no-reported", action="store_true",
                        help="leave out the paper's reported numbers shipped with the package")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.leaderboard import build, build_all
    from phreg_bench.results.shipped import reported_dir

    folders = list(args.results_dir or [Path("phreg_results")])
    if not args.no_reported:
        shipped = reported_dir()
        if shipped.resolve() not in {folder.resolve() for folder in folders}:
            folders.append(shipped)
    written = build(folders, args.suite, args.out) if args.suite else build_all(folders[0], args.out, folders[1:])
    for path in written:
        say("wrote ", path)
    return 0
