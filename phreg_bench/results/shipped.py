"""The paper's reported result files, shipped inside the package (package data ``phreg_bench/reported_results``).

Read through :mod:`importlib.resources`, so they are found the same way in a source checkout, an editable
install and a wheel. ``python -m phreg_bench.reported`` and ``python -m phreg_bench.probes.reported``
regenerate them there.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

REPORTED_DATA = "reported_results"  # folder under phreg_bench/, declared as package data in pyproject.toml


def reported_dir() -> Path:
    """The folder of the shipped reported result files (``<backbone>/<method>/<task>__...json``).

    Raises:
        FileNotFoundError: the installation lacks the folder (a wheel built without the package data).
    """
    folder = Path(str(resources.files("phreg_bench") / REPORTED_DATA))
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: the reported paper results are missing from this installation of "
                                "phreg-bench; reinstall it (pip install --force-reinstall phreg-bench)")
    return folder


def regenerate(write: Callable[[Path], list[Path]], argv: list[str] | None = None) -> None:
    """The ``__main__`` of a reported-results module: ``write`` its files into ``argv[0]`` (default: the shipped
    folder, :func:`reported_dir`) and print their paths."""
    argv = sys.argv[1:] if argv is None else argv
    for path in write(Path(argv[0]) if argv else reported_dir()):
        print(path)
