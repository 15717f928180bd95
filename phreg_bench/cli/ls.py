"""`phreg-bench ls {backbones,methods,tasks,suites}`."""

from __future__ import annotations

import argparse

from phreg_bench.cli import add_row, make_table, print_table

KINDS = ("backbones", "methods", "tasks", "suites", "datasets")


def register(subparsers) -> None:
    parser = subparsers.add_parser("ls", help="list registered backbones, methods, tasks, suites or datasets")
    parser.add_argument("kind", choices=KINDS, help="what to list")
    parser.set_defaults(handler=handle)


def _yes_no(value) -> str:
    return "" if value is None else ("yes" if value else "no")


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.registries import BACKBONES, DATASETS, METHODS, SUITES, TASKS

    if args.kind == "backbones":
        table = make_table(args.kind, ("name", "patch", "width", "depth", "text", "regs", "aliases / summary"))
        for column in table.columns[1:6]:
            column.justify = "right"
        for entry in BACKBONES:
            meta = entry.metadata
            about = meta.get("summary", entry.source)
            if entry.aliases:
                about = f"{about} (aka {', '.join(entry.aliases)})"
            add_row(table, entry.name, meta.get("patch_size", ""), meta.get("width", ""), meta.get("depth", ""),
                    _yes_no(meta.get("text")), meta.get("registers", ""), about)
    elif args.kind in ("methods", "datasets"):
        table = make_table(args.kind, ("name", "aliases", "summary"))
        for entry in METHODS if args.kind == "methods" else DATASETS:
            add_row(table, entry.name, ", ".join(entry.aliases), entry.metadata.get("summary", entry.source))
    elif args.kind == "tasks":
        table = make_table(args.kind, ("name", "short", "version", "split", "samples", "metric", "protocols"))
        for entry in TASKS:
            spec = entry.resolve()
            add_row(table, spec.name, spec.short_name or "", spec.version, spec.split,
                    spec.num_samples or "generated", spec.metric,
                    ", ".join(f"{p}*" if p == spec.default_protocol else p for p in spec.protocols))
    else:
        table = make_table(args.kind, ("name", "tasks", "description"))
        for entry in SUITES:
            suite = entry.resolve()
            add_row(table, entry.name, ", ".join(suite.get("tasks", [])), suite.get("description", ""))
    print_table(table)
    return 0
