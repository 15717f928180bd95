"""A content-addressed, integrity-checked on-disk cache of frozen-backbone features.

An entry is a folder named by the sha256 of everything that changes its bytes (the caller passes those
fields: weights sha256, method config, geometry/resolution, dataset split and manifest, code version,
precision, storage dtype). It holds fixed-shape rows (one row = one view of one sample) in ``.npy`` files
opened as memory maps, so heads read random batches at disk speed:

    <root>/features/<key[:2]>/<key>/meta.json      the key fields, row count and array layout
                                   /<array>.npy     [num_rows, *shape] per array
                                   /state.npy       per row: done flag + CRC32 of each array's row

Integrity: a row counts as present only when its done flag is set *and* its bytes match the recorded
CRC32 (checked for every row when the entry is opened); a corrupted or half-written row is recomputed, a
broken layout (missing / truncated file, meta mismatch) wipes the entry. Row data is flushed before the
state that marks it done is replaced atomically (temp file + ``os.replace``), so an interrupted extraction
resumes where it stopped.

Concurrent writers (the ranks of a ``torchrun`` group, or two runs sharing ``--cache-dir``) are safe: an
entry is created or attached under an exclusive lock on ``<key[:2]>/.<key>.lock`` (``flock``; on NFS Linux
maps it to POSIX locks), rows are written with ``pwrite`` at their byte offset (no page of a neighbouring
row is rewritten, which matters between nodes), and every state save merges, under the same lock, the rows
the other writers marked done whose bytes match their CRC32. :meth:`CacheEntry.refresh` adopts the other
writers' rows after a barrier.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phreg_bench.results.hashing import canonical_json
from phreg_core.atomic import write_atomic
from phreg_core.errors import PhregError

CACHE_FORMAT = 1
STATE_SAVE_INTERVAL_S = 5.0


class CacheSpaceError(PhregError, OSError):
    """Not enough free disk for a new cache entry (checked before any row is computed)."""


@dataclass(frozen=True)
class ArraySpec:
    """Per-row shape and numpy dtype of one cached array."""

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": np.dtype(self.dtype).str}

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({"cache_format": CACHE_FORMAT, **fields}).encode()).hexdigest()


def _crc(row: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(row).view(np.uint8).ravel())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block; never nest two in one process."""
    import fcntl  # POSIX only, like the memory maps' r+ sharing this cache relies on

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class CacheEntry:
    """One cache entry: fixed-shape rows of named arrays (see the module docstring)."""

    def __init__(self, path: Path, fields: dict[str, Any], arrays: dict[str, ArraySpec], num_rows: int):
        self.path = path
        self.key = path.name
        self.fields = fields
        self.arrays = dict(arrays)
        self.num_rows = int(num_rows)
        self.corrupted_rows = 0
        self.created = False
        self.open_error: str | None = None  # why an existing entry was wiped, if it was
        self._last_save = time.monotonic()
        self._dirty = False
        self._lock_path = path.parent / f".{path.name}.lock"
        with _locked(self._lock_path):  # one process creates the entry; the others attach to it
            self._open()

    # -- layout ---------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"cache_format": CACHE_FORMAT, "key": self.key, "fields": json.loads(canonical_json(self.fields)),
                "num_rows": self.num_rows, "arrays": {k: v.to_json() for k, v in sorted(self.arrays.items())}}

    def _open(self) -> None:
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            try:
                self._attach(json.loads(meta_path.read_text()))
                return
            except Exception as error:  # noqa: BLE001 - numpy's header parser raises EOFError, TokenError, ...
                self.open_error = f"{type(error).__name__}: {error}"
                shutil.rmtree(self.path, ignore_errors=True)
        self._create()

    def _attach(self, meta: dict[str, Any]) -> None:
        if meta != self._meta():
            raise ValueError(f"cache entry {self.path} does not match its key (meta.json differs)")
        self._maps = {}
        for name, spec in self.arrays.items():
            np.load(self.path / f"{name}.npy", mmap_mode="r")  # read-only first: a truncated file raises
            array = np.load(self.path / f"{name}.npy", mmap_mode="r+")  # (r+ would silently zero-extend it)
            if array.shape != (self.num_rows, *spec.shape) or array.dtype != np.dtype(spec.dtype):
                raise ValueError(f"{self.path / name}.npy has shape {array.shape} / {array.dtype}")
            self._maps[name] = array
        state = self._disk_state()
        if state is None:
            raise ValueError(f"{self.path / 'state.npy'} is missing or has the wrong layout")
        self._state = state.copy()
        self._verify()

    def _disk_state(self) -> np.ndarray | None:
        try:
            state = np.load(self.path / "state.npy")
        except (OSError, ValueError):
            return None
        if state.shape != (self.num_rows, 1 + len(self.arrays)) or state.dtype != np.int64:
            return None
        return state

    def _adopt_disk_rows(self) -> int:
        """Mark done the rows another writer committed whose bytes match their CRC32; returns how many."""
        disk = self._disk_state()
        if disk is None:
            return 0
        names = sorted(self.arrays)
        adopted = 0
        for row in np.flatnonzero((disk[:, 0] == 1) & (self._state[:, 0] == 0)):
            if all(_crc(self._maps[name][row]) == disk[row, 1 + i] for i, name in enumerate(names)):
                self._state[row] = disk[row]
                adopted += 1
        return adopted

    def refresh(self) -> int:
        """Re-map the arrays and adopt the rows other processes wrote since this entry was opened (after a
        barrier, under ``torchrun``); returns how many rows were adopted."""
        with _locked(self._lock_path):
            self._maps = {name: np.load(self.path / f"{name}.npy", mmap_mode="r+") for name in self.arrays}
            return self._adopt_disk_rows()

    def _create(self) -> None:
        self.created = True
        self.path.mkdir(parents=True, exist_ok=True)
        needed, free = self.num_rows * self.bytes_per_row, shutil.disk_usage(self.path).free
        if needed > free:
            shutil.rmtree(self.path, ignore_errors=True)
            raise CacheSpaceError(
                f"feature cache entry needs {needed / 2**30:.1f} GiB in {self.path.parent} but {free / 2**30:.1f} GiB "
                "are free; point --cache-dir (or $PHREG_CACHE) at a larger disk, or cache less (e.g. "
                "--protocol-override cache_windows=center, or train_features=full to train online)")
        self._maps = {}
        for name, spec in self.arrays.items():
            target = self.path / f"{name}.npy"
            write_atomic(target, lambda temp, spec=spec: np.lib.format.open_memmap(
                temp, mode="w+", dtype=np.dtype(spec.dtype), shape=(self.num_rows, *spec.shape)).flush())
            self._maps[name] = np.load(target, mmap_mode="r+")
        self._state = np.zeros((self.num_rows, 1 + len(self.arrays)), dtype=np.int64)
        self._save_state(lock=False)  # _create runs under the lock already
        write_atomic(self.path / "meta.json", lambda temp: Path(temp).write_text(
            json.dumps(self._meta(), indent=1, sort_keys=True)))

    def _verify(self) -> None:
        """Re-check the CRC32 of every row marked done; mismatching rows become missing."""
        names = sorted(self.arrays)
        bad = []
        for row in np.flatnonzero(self._state[:, 0] == 1):
            expected = self._state[row, 1:]
            if any(_crc(self._maps[name][row]) != expected[i] for i, name in enumerate(names)):
                bad.append(row)
        if bad:
            self.corrupted_rows = len(bad)
            self._state[bad, 0] = 0
            write_atomic(self.path / "state.npy", lambda temp: _save_npy(temp, self._state))  # under the lock

    def _save_state(self, *, lock: bool = True) -> None:
        """Merge the other writers' committed rows, then replace ``state.npy`` atomically (under the lock)."""
        with _locked(self._lock_path) if lock else contextlib.nullcontext():
            self._adopt_disk_rows()
            write_atomic(self.path / "state.npy", lambda temp: _save_npy(temp, self._state))
        self._dirty = False
        self._last_save = time.monotonic()

    # -- use ------------------------------------------------------------------------------------------
    def missing_rows(self) -> np.ndarray:
        return np.flatnonzero(self._state[:, 0] != 1)  # any other flag value is not "done"

    @property
    def complete(self) -> bool:
        return bool((self._state[:, 0] == 1).all())

    def write(self, rows: np.ndarray | list[int], values: dict[str, np.ndarray]) -> None:
        """Store ``values[name][i]`` as row ``rows[i]`` of each array, then mark the rows done."""
        rows = np.asarray(rows, dtype=np.int64)
        if set(values) != set(self.arrays):
            raise ValueError(f"write needs arrays {sorted(self.arrays)}, got {sorted(values)}")
        names = sorted(self.arrays)
        crcs = np.zeros((len(rows), len(names)), dtype=np.int64)
        for column, name in enumerate(names):
            spec = self.arrays[name]
            data = np.asarray(values[name]).astype(spec.dtype, copy=False)
            if data.shape != (len(rows), *spec.shape):
                raise ValueError(f"array {name!r}: expected {(len(rows), *spec.shape)}, got {data.shape}")
            self._write_rows(name, rows, data)
            crcs[:, column] = [_crc(item) for item in data]
        self._state[rows, 0] = 1
        self._state[rows, 1:] = crcs
        self._dirty = True
        if time.monotonic() - self._last_save > STATE_SAVE_INTERVAL_S:
            self._save_state()

    def _write_rows(self, name: str, rows: np.ndarray, data: np.ndarray) -> None:
        """``pwrite`` each row at its byte offset in ``<name>.npy``, then fsync: exactly the row's bytes reach
        the file (a memory-map flush writes whole pages, which may hold another writer's rows)."""
        array = self._maps[name]
        row_bytes = self.arrays[name].row_bytes
        fd = os.open(self.path / f"{name}.npy", os.O_WRONLY)
        try:
            for row, item in zip(rows, data, strict=True):
                os.pwrite(fd, np.ascontiguousarray(item).tobytes(), array.offset + int(row) * row_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)

    def flush(self) -> None:
        if self._dirty:
            self._save_state()

    def read(self, name: str, rows: np.ndarray | list[int]) -> np.ndarray:
        """Rows of one array (a copy), in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        if not (self._state[rows, 0] == 1).all():
            raise RuntimeError(f"cache entry {self.path}: reading rows that were never written")
        order = np.argsort(rows, kind="stable")
        data = self._maps[name][rows[order]]
        out = np.empty_like(data)
        out[order] = data
        return out

    @property
    def bytes_per_row(self) -> int:
        return sum(spec.row_bytes for spec in self.arrays.values())

    def status(self) -> dict[str, Any]:
        return {"key": self.key, "path": str(self.path), "rows": self.num_rows, "created": self.created,
                "wiped": self.open_error, "corrupted_rows_recomputed": self.corrupted_rows,
                "bytes_per_row": self.bytes_per_row}


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as stream:
        np.save(stream, array)
        stream.flush()
        os.fsync(stream.fileno())


class FeatureCache:
    """Entries under ``<root>/features``; ``root=None`` keeps them in a temporary folder for this run only.

    ``temporary=True`` marks a given ``root`` as this run's only (the folder a ``torchrun`` group shares);
    the ``owner`` removes it on :meth:`close`.
    """

    def __init__(self, root: Path | None, *, temporary: bool = False, owner: bool = True):
        self._temp = None
        self._shared_temp = Path(root) if temporary and root is not None and owner else None
        if root is None:
            self._temp = tempfile.TemporaryDirectory(prefix="phreg-features-")
            root = Path(self._temp.name)
        self.root = Path(root) / "features"
        self.persistent = self._temp is None and not temporary

    def entry(self, fields: dict[str, Any], arrays: dict[str, ArraySpec], num_rows: int) -> CacheEntry:
        key = cache_key({"fields": fields, "arrays": {k: v.to_json() for k, v in arrays.items()},
                         "num_rows": num_rows})
        return CacheEntry(self.root / key[:2] / key, fields, arrays, num_rows)

    def close(self) -> None:
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None
        if self._shared_temp is not None:
            shutil.rmtree(self._shared_temp, ignore_errors=True)
            self._shared_temp = None
