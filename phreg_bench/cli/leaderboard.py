"""`phreg-bench leaderboard`: JSON + Markdown + HTML boards built from result files only."""

from __future__ import annotations

import argparse
from pathlib import Path

from phreg_bench.cli import say

REPO_REPORTED = Path(__file__).resolve().parents[2] / "leaderboards" / "reported"


def register(subparsers) -> None:
    parser = subparsers.add_parser("leaderboard", help="build leaderboards from result files")
    parser.add_argument("--results-dir", type=Path, action="append",
                        help="results folder, repeatable (default: ./phreg_results)")
    parser.add_argument("--suite", help="build only this suite (default: every suite with results)")
    parser.add_argument("--out", type=Path, default=Path("leaderboards"),
                        help="output folder (default: ./leaderboards)")
    parser.add_argument("--no-reported", action="store_true",
                        help="leave out the paper's reported numbers shipped in leaderboards/reported")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.leaderboard import build, build_all

    folders = list(args.results_dir or [Path("phreg_results")])
    known = {folder.resolve() for folder in folders}
    if not args.no_reported and REPO_REPORTED.is_dir() and REPO_REPORTED.resolve() not in known:
        folders.append(REPO_REPORTED)
    written = build(folders, args.suite, args.out) if args.suite else build_all(folders[0], args.out, folders[1:])
    for path in written:
        say("wrote ", path)
    return 0
