"""Provenance of a measured result: versions, code state, hardware, command, time."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from phreg_bench.results.records import Provenance

PACKAGES = ("phreg-bench", "torch", "torchvision", "timm", "open_clip_torch", "numpy", "safetensors")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(package_dir: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the git work tree the package ``package_dir`` (default: this ``phreg_bench``
    folder) lives in, or both ``None``.

    A commit is recorded only when the package's own files are tracked in that work tree. An installed
    (non-editable) copy under ``site-packages`` is no part of the repository it may happen to sit in (a
    virtual environment inside the user's project), so that repository's commit would be a false record.
    """
    folder = (package_dir or Path(__file__).resolve().parents[1]).resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "--", ".") is None:  # no tracked file in the package folder
        return {"commit": None, "dirty": None}
    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if commit is None else bool(dirty)}


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def provenance(command: list[str] | None, started_at: str, finished_at: str) -> Provenance:
    """This run's provenance (``command`` default: ``sys.argv``; times in UTC ISO 8601, see :func:`utc_now`)."""
    return Provenance(package_versions=package_versions(), git=git_state(), hardware=hardware(),
                      command=list(command if command is not None else sys.argv), started_at=started_at,
                      finished_at=finished_at)
