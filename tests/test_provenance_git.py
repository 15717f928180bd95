"""Provenance records a git commit only for the work tree the package itself lives in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from phreg_bench.results.provenance import git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _repo(folder: Path) -> Path:
    folder.mkdir(parents=True)
    _git(folder, "init", "-q")
    (folder / "README").write_text("x\n")
    _git(folder, "add", "README")
    _git(folder, "commit", "-q", "-m", "init")
    return folder


def test_installed_copy_inside_a_users_repository_records_no_commit(tmp_path):
    project = _repo(tmp_path / "project")
    (project / ".gitignore").write_text(".venv/\n")
    for venv in (".venv", "env"):  # ignored, and merely untracked
        package = project / venv / "lib" / "site-packages" / "phreg_bench"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        assert git_state(package) == {"commit": None, "dirty": None}


def test_source_checkout_records_its_commit_and_dirty_flag(tmp_path):
    checkout = _repo(tmp_path / "checkout")
    package = checkout / "phreg_bench"
    package.mkdir()
    (package / "__init__.py").write_text("")
    _git(checkout, "add", "phreg_bench")
    _git(checkout, "commit", "-q", "-m", "package")
    head = _git(checkout, "rev-parse", "HEAD")
    assert git_state(package) == {"commit": head, "dirty": False}
    (package / "__init__.py").write_text("# edited\n")
    assert git_state(package) == {"commit": head, "dirty": True}


def test_outside_any_repository(tmp_path):
    package = tmp_path / "site-packages" / "phreg_bench"
    package.mkdir(parents=True)
    assert git_state(package) == {"commit": None, "dirty": None}
