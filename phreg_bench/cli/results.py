"""`phreg-bench results {show,validate}`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table


def register(subparsers) -> None:
    parser = subparsers.add_parser("results", help="inspect and validate result files")
    sub = parser.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="tabulate result files (a file or a folder)")
    show.add_argument("path", type=Path, nargs="?", default=Path("phreg_results"))
    show.set_defaults(handler=handle_show)
    check = sub.add_parser("validate", help="validate result files against the schema; non-zero exit if any fail")
    check.add_argument("path", type=Path, nargs="?", default=Path("phreg_results"))
    check.set_defaults(handler=handle_validate)


def _files(path: Path) -> list[Path]:
    from phreg_bench.results.store import result_files

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; pass a result file or a results folder")
    return result_files(path)


def handle_show(args: argparse.Namespace) -> int:
    from phreg_bench.results.store import read_result

    table = Table(title=str(args.path))
    for column in ("task", "backbone", "method", "protocol", "kind", "main", "value", "complete"):
        table.add_column(column)
    for file in _files(args.path):
        record = read_result(file)
        metrics = record["metrics"]
        table.add_row(record["task"]["name"], record["backbone"]["name"], record["method"]["name"],
                      record["protocol"]["name"], record["kind"], metrics["main"],
                      f"{metrics['values'][metrics['main']]:.4g}", "yes" if record["status"]["complete"] else "no")
    Console().print(table)
    return 0


def handle_validate(args: argparse.Namespace) -> int:
    from phreg_bench.results.schema import ResultError
    from phreg_bench.results.store import read_result

    files = _files(args.path)
    bad = 0
    for file in files:
        try:
            read_result(file)
        except ResultError as error:
            bad += 1
            print(f"INVALID {error}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad else 0
