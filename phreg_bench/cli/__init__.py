"""The ``phreg-bench`` command line.

Every module in this package that defines ``register(subparsers)`` is a subcommand; ``register`` adds its
parser and sets ``handler`` (a function ``(args) -> int``) as a default. Modules whose name starts with ``_``
are not subcommands: ``_options`` (option types and groups, ``KEY=VALUE`` parsing, device and batch-size
resolution shared by several subcommands) and ``_default`` (the built-in default of ``phreg-bench run``).

Output: results, tables and paths go to standard output (:data:`out`); progress, notes and errors go to
standard error (:data:`console`), so ``phreg-bench run > run.log`` keeps the results. Outside a terminal
(a pipe, a log file, a cluster job) nothing is wrapped or cut: lines are as long as they need to be.
Names and paths are never parsed as rich markup (see :func:`plain` and :func:`print_table`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import traceback
from collections.abc import Iterable

from rich.cells import cell_len
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text

from phreg_bench import __version__
from phreg_core.errors import ConfigError, PhregError

UNLIMITED_WIDTH = 1_000_000  # "no wrapping": wider than any line or table the CLI prints


class PhregConsole(Console):
    """A rich console that, outside a terminal and without an explicit ``width``, never wraps or cuts lines.

    rich assumes 80 columns when its stream is not a terminal; logs and pipes have no width, so tables take
    their natural width there and long paths stay on one line.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("highlight", False)
        kwargs.setdefault("soft_wrap", True)
        self._fixed_width = kwargs.get("width") is not None
        super().__init__(*args, **kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self._fixed_width or self.is_terminal:
            return size
        return ConsoleDimensions(UNLIMITED_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


console = PhregConsole(stderr=True)  # progress, notes, errors
out = PhregConsole()  # results, tables, paths


class CliError(PhregError):
    """A user error: printed as one line, exit status 2."""


class OptionError(CliError, ConfigError):
    """A command-line option with a value the command cannot use; the message names the option."""


def plain(*parts: object, style: str | None = None) -> Text:
    """Literal text (names and paths are never parsed as markup): ``plain("results in ", path)``."""
    return Text("".join(str(p) for p in parts), style=style or "")


def say(*parts: object, to: Console | None = None, style: str | None = None) -> None:
    """Print one literal line (default: to standard output), never wrapped by rich."""
    (to or out).print(plain(*parts, style=style), soft_wrap=True)


def note(*parts: object, style: str | None = None) -> None:
    """Print one literal line of progress or diagnostics to standard error."""
    say(*parts, to=console, style=style)


def make_table(title: str | None, columns: Iterable[str]) -> Table:
    """A table whose cells fold instead of being cut: a name or path never loses a character."""
    table = Table(title=Text(title) if title else None)
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    return table


def add_row(table: Table, *cells: object) -> None:
    """Add a row of literal cells (``[x]`` in a name stays ``[x]``)."""
    table.add_row(*(cell if isinstance(cell, Text) else Text("" if cell is None else str(cell)) for cell in cells))


def _unbroken_width(table: Table) -> int:
    """Columns as wide as their longest word (header or cell), plus padding and borders."""
    widths = [max(cell_len(word) for cell in (column.header, *column.cells) for word in str(cell).split() or [""])
              for column in table.columns]
    return sum(widths) + 2 * len(widths) + len(widths) + 1


def print_table(table: Table, to: Console | None = None) -> None:
    """Print ``table`` to standard output (or ``to``).

    Outside a terminal it takes its natural width. In a terminal too narrow for its longest words it is
    printed as one block per row (``column: value`` lines) instead, so that no name or path is broken.
    """
    target = to or out
    if _unbroken_width(table) <= target.width:
        target.print(table, soft_wrap=False)
        return
    if table.title:
        target.print(Text(str(table.title), style="bold"), soft_wrap=True)
    columns = [(str(column.header), list(column.cells)) for column in table.columns]
    label = max(len(name) for name, _ in columns[1:]) if len(columns) > 1 else 0
    for row in range(table.row_count):
        target.print(Text(str(columns[0][1][row])), soft_wrap=True)
        for name, cells in columns[1:]:
            target.print(Text(f"  {name.ljust(label)}  {cells[row]}"), soft_wrap=True)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (exit status 2) instead of the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="phreg-bench",
        description="PH-Reg (post-hoc self-distilled registers) and a dense-prediction benchmark for ViTs.",
    )
    parser.add_argument("--version", action="version", version=f"phreg-bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")  # subcommands are OneLineParsers too
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def debug() -> bool:
    """``PHREG_DEBUG=1``: every failure shows its traceback."""
    return os.environ.get("PHREG_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run one command; the project's own errors (:class:`PhregError`) become one line and exit status 2.

    Anything else (a bug, CUDA out of memory) keeps its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        note("interrupted", style="red")
        return 130
    except PhregError as error:
        if debug():
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
        return 2
