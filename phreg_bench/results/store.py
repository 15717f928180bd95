"""Where result files live, atomic writes, and what a rerun may skip."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phreg_bench.results.hashing import canonical_json, config_hash
from phreg_bench.results.schema import ResultError, dumps_strict, loads_strict, validate
from phreg_core.atomic import write_text_atomic
from phreg_core.errors import MissingFileError

OVERWRITE_MODES = ("only-missing", "always")


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    write_text_atomic(path, dumps_strict(record))


def record_checksum(record: dict[str, Any]) -> str:
    """sha256 of the record without its ``record_sha256`` field (canonical JSON): edits after writing show."""
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "record_sha256"}).encode()
                          ).hexdigest()


def expected_config_hash(record: dict[str, Any]) -> str:
    """The config hash of a validated record's identity fields, computed as :mod:`records` computes it.

    Measured records: seed from ``provenance.seed``, limit from ``status.limit``, the precision that ran from
    ``precision``; reported: seed 0, no limit, no precision.
    """
    if record["kind"] == "measured":
        seed, limit = record["provenance"].get("seed"), record["status"].get("limit")
    else:
        seed, limit = 0, None
    if type(seed) is not int or not (limit is None or type(limit) is int):
        raise ResultError("provenance.seed must be an integer and status.limit an integer or null")
    try:
        return config_hash(task=record["task"], backbone=record["backbone"], method=record["method"],
                           protocol=record["protocol"]["settings"], seed=seed, limit=limit,
                           precision=record.get("precision"))
    except (KeyError, TypeError, ValueError) as error:
        raise ResultError(f"the identity fields cannot be hashed ({type(error).__name__}: {error})") from error


def check_integrity(record: dict[str, Any]) -> dict[str, Any]:
    """Refuse a record whose ``config_hash`` does not match its identity fields, or whose checksum (written
    by :meth:`ResultStore.write`) does not match its content: the file was edited after it was written."""
    expected = expected_config_hash(record)
    if record["config_hash"] != expected:
        raise ResultError(f"config_hash {record['config_hash'][:12]}… does not match the task, backbone, method, "
                          f"protocol, seed, limit and precision recorded in the file ({expected[:12]}…): it was "
                          "edited after it was written; rerun the task instead of editing its result")
    if "record_sha256" in record and record["record_sha256"] != record_checksum(record):
        raise ResultError("record_sha256 does not match the content (metrics or other fields were edited after "
                          "the file was written); rerun the task instead of editing its result")
    return record


def read_result(path: Path) -> dict[str, Any]:
    """Read, validate and integrity-check one result file; every error is a :class:`ResultError` naming it."""
    try:
        text = path.read_bytes()
    except OSError as error:
        raise ResultError(f"{path}: cannot be read ({error.strerror or error})") from error
    try:
        return check_integrity(validate(loads_strict(text)))
    except RecursionError as error:
        raise ResultError(f"{path}: nested too deeply to be a result file") from error
    except ResultError as error:
        raise ResultError(f"{path}: {error}") from error
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ResultError(f"{path}: not a JSON result file ({error})") from error


RESULT_GLOB = "*__*__*__*.json"  # <family>__<dataset>__<protocol>__<hash12>.json, as path_for names them


def result_files(folder: Path) -> list[Path]:
    """Result files under ``folder`` (other JSON, such as adapter sidecars or leaderboards, is not one)."""
    if not folder.is_dir():
        raise MissingFileError(f"results folder {folder} does not exist; pass a result file or a results folder")
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
        """Validate and write atomically (a measured record gets its ``record_sha256`` checksum); returns the path.

        Reported records (quoted numbers, regenerated by ``python -m phreg_bench.reported``) carry no checksum.
        """
        stored = loads_strict(dumps_strict(validate(record)))  # exactly what a reader will see
        if record["kind"] == "measured":
            stored.pop("record_sha256", None)
            record["record_sha256"] = stored["record_sha256"] = record_checksum(stored)
        check_integrity(stored)
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
