"""The ``phreg-bench`` command line.

Every module in this package that defines ``register(subparsers)`` is a subcommand; ``register`` adds its
parser and sets ``handler`` (a function ``(args) -> int``) as a default.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil

from rich.console import Console
from rich.text import Text

from phreg_bench import __version__
from phreg_core.errors import PhregError

console = Console(stderr=True)


class CliError(PhregError):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phreg-bench",
        description="PH-Reg (post-hoc self-distilled registers) and a dense-prediction benchmark for ViTs.",
    )
    parser.add_argument("--version", action="version", version=f"phreg-bench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        return 130
    except (CliError, LookupError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
            TypeError, RuntimeError, OSError) as error:
        if os.environ.get("PHREG_DEBUG"):
            raise
        message = str(error).strip() or type(error).__name__
        console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
        return 2
