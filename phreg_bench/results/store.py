"""Where result files live, atomic writes, and what a rerun may skip."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phreg_bench.results.schema import ResultError, dumps_strict, loads_strict, validate
from phreg_core.atomic import write_text_atomic

OVERWRITE_MODES = ("only-missing", "always")


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    write_text_atomic(path, dumps_strict(record))


def read_result(path: Path) -> dict[str, Any]:
    """Read and validate one result file; errors name the file."""
    try:
        return validate(loads_strict(path.read_text()))
    except (ValueError, ResultError) as error:
        raise ResultError(f"{path}: {error}") from error


RESULT_GLOB = "*__*__*__*.json"  # <family>__<dataset>__<protocol>__<hash12>.json, as path_for names them


def result_files(folder: Path) -> list[Path]:
    """Result files under ``folder`` (other JSON, such as adapter sidecars or leaderboards, is not one)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"results folder {folder} does not exist")
    return sorted(p for p in folder.rglob(RESULT_GLOB) if not p.name.startswith("."))


def slug(text: str) -> str:
    """A file-name-safe form of a name (``open_clip:ViT-B-16/openai`` -> ``open_clip_ViT-B-16_openai``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


@dataclass
class ResultStore:
    """A results folder: ``<root>/<backbone>/<method>/<family>__<dataset>__<protocol>__<hash12>.json``."""

    root: Path

    def path_for(self, record: dict[str, Any]) -> Path:
        family, _, dataset = record["task"]["name"].partition("/")
        name = f"{family}__{dataset}__{slug(record['protocol']['name'])}__{record['config_hash'][:12]}.json"
        return self.root / slug(record["backbone"]["name"]) / slug(record["method"]["name"]) / name

    def is_done(self, path: Path) -> bool:
        """A finished, valid result exists (an invalid file counts as missing and is recomputed)."""
        if not path.exists():
            return False
        try:
            read_result(path)
        except ResultError:
            return False
        return True

    def write(self, record: dict[str, Any]) -> Path:
        validate(record)
        path = self.path_for(record)
        write_json_atomic(path, record)
        return path

    def remove_stale_temp_files(self, older_than_s: float = 60.0) -> int:
        """Delete temp files a killed writer left behind (never a finished result)."""
        if not self.root.is_dir():
            return 0
        now, removed = time.time(), 0
        for temp in self.root.rglob(".*.json.*.tmp"):
            if now - temp.stat().st_mtime > older_than_s:
                temp.unlink(missing_ok=True)
                removed += 1
        return removed

    def iter_files(self) -> Iterator[Path]:
        yield from result_files(self.root)
