"""`phreg-bench results {show,validate}`.

Both read every file they are given: an invalid file is reported (standard error for ``show``) and the
others are still shown or checked (``show`` lists a failed run's error record as ``error`` in the table and
its error message after the table); the exit status is 1 when any file is invalid or none was found.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from phreg_bench.cli import OptionError, add_row, make_table, note, print_table, say

if TYPE_CHECKING:
    from phreg_bench.results.records import ResultRecord


def register(subparsers) -> None:
    parser = subparsers.add_parser("results", help="inspect and validate result files")
    sub = parser.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="tabulate result files (a file or a folder)")
    show.add_argument("path", type=Path, nargs="?", default=Path("phreg_results"))
    show.set_defaults(handler=handle_show)
    check = sub.add_parser("validate", help="validate result files against the schema, their config hash and "
                           "checksum; non-zero exit if any fail or none is found")
    check.add_argument("path", type=Path, nargs="?", default=Path("phreg_results"))
    check.set_defaults(handler=handle_validate)


def _files(path: Path) -> list[Path]:
    from phreg_bench.results.store import result_files

    if path.is_file():
        return [path]
    if not path.is_dir():
        raise OptionError(f"{path} does not exist; pass a result file or a results folder")
    return result_files(path)


def _read_all(path: Path) -> tuple[list[tuple[Path, ResultRecord]], list[str]]:
    """``([(file, record)], [error messages])`` for every result file under ``path``."""
    from phreg_bench.results.schema import ResultError
    from phreg_bench.results.store import read_result

    records, errors = [], []
    for file in _files(path):
        try:
            records.append((file, read_result(file)))
        except ResultError as error:
            errors.append(str(error))
    return records, errors


def _status(record: ResultRecord) -> tuple[str, str, str]:
    """``(main metric, value, complete)`` cells; a failed run shows ``error`` as its value (the message is
    listed after the table, so that one long message does not widen every row)."""
    from phreg_bench.results.records import format_metric

    if record.status.error is not None:
        return "", "error", "no"
    assert record.metrics is not None
    score = record.metrics.score
    return score.metric, format_metric(score.value), "yes" if record.status.complete else "no"


def handle_show(args: argparse.Namespace) -> int:
    records, errors = _read_all(args.path)
    if records:
        table = make_table(str(args.path), ("task", "backbone", "method", "protocol", "kind", "main", "value",
                                            "complete"))
        for _, record in records:
            identity = record.identity
            add_row(table, identity.task.name, identity.backbone.name, identity.method.name, identity.protocol.name,
                    record.kind, *_status(record))
        print_table(table)
    for file, record in records:  # the failed runs' errors, whole, one line each
        if record.status.error is not None:
            say(f"{file}: error: {record.status.error.type}: {record.status.error.message}")
    for error in errors:
        note("INVALID ", error, style="red")
    if not records and not errors:
        note(f"no result files in {args.path}", style="yellow")
    return 1 if errors or not records else 0


def handle_validate(args: argparse.Namespace) -> int:
    records, errors = _read_all(args.path)
    for error in errors:
        say("INVALID ", error)
    say(f"{len(records)} valid, {len(errors)} invalid")
    if not records and not errors:
        note(f"no result files in {args.path} (expected <family>__<dataset>__<protocol>__<hash>.json files)",
             style="yellow")
        return 1
    return 1 if errors else 0
