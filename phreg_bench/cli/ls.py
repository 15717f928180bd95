"""`phreg-bench ls {backbones,methods,tasks,suites}`."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

KINDS = ("backbones", "methods", "tasks", "suites", "datasets")


def register(subparsers) -> None:
    parser = subparsers.add_parser("ls", help="list registered backbones, methods, tasks, suites or datasets")
    parser.add_argument("kind", choices=KINDS, help="what to list")
    parser.set_defaults(handler=handle)


def _yes_no(value) -> str:
    return "" if value is None else ("yes" if value else "no")


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.registries import BACKBONES, DATASETS, METHODS, SUITES, TASKS

    table = Table(title=args.kind, show_lines=False)
    table.add_column("name", no_wrap=True)
    if args.kind == "backbones":
        for column in ("patch", "width", "depth", "text", "regs"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("aliases / summary", ratio=1)
        for entry in BACKBONES:
            meta = entry.metadata
            about = meta.get("summary", entry.source)
            if entry.aliases:
                about = f"{about} (aka {', '.join(entry.aliases)})"
            table.add_row(entry.name, str(meta.get("patch_size", "")), str(meta.get("width", "")),
                          str(meta.get("depth", "")), _yes_no(meta.get("text")), str(meta.get("registers", "")),
                          about)
    elif args.kind in ("methods", "datasets"):
        for column in ("aliases", "summary"):
            table.add_column(column)
        for entry in METHODS if args.kind == "methods" else DATASETS:
            table.add_row(entry.name, ", ".join(entry.aliases), entry.metadata.get("summary", entry.source))
    elif args.kind == "tasks":
        for column in ("short", "version", "split", "samples", "metric", "protocols"):
            table.add_column(column)
        for entry in TASKS:
            spec = entry.resolve()
            table.add_row(spec.name, spec.short_name or "", spec.version, spec.split,
                          str(spec.num_samples or "generated"), spec.metric,
                          ", ".join(f"{p}*" if p == spec.default_protocol else p for p in spec.protocols))
    else:
        for column in ("tasks", "description"):
            table.add_column(column)
        for entry in SUITES:
            suite = entry.resolve()
            table.add_row(entry.name, ", ".join(suite.get("tasks", [])), suite.get("description", ""))
    Console().print(table)
    return 0
