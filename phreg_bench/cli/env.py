"""`phreg-bench env`: the provenance block every result records."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("env", help="print the provenance block (versions, git state, hardware)")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.results.provenance import git_state, hardware, package_versions

    print(json.dumps({"package_versions": package_versions(), "git": git_state(), "hardware": hardware()},
                     indent=2))
    return 0
