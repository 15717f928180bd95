"""The paper's reported result files, shipped inside the package (package data ``phreg_bench/reported_results``).

Read through :mod:`importlib.resources`, so they are found the same way in a source checkout, an editable
install and a wheel. ``python -m phreg_bench.reported`` and ``python -m phreg_bench.probes.reported``
regenerate them there.
"""

from __future__ import annotations

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
