"""The project's two hashing helpers: the sha256 of a file's bytes and the canonical JSON text that hashes
are taken over. Every file fingerprint (weights, adapters, class files, denoisers) and every content key
(config hash, caches, neuron lists) goes through these, so equal inputs give equal digests everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

__all__ = ["canonical_json", "file_sha256"]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Lower-case hex sha256 of the bytes of the file at ``path``, read in ``chunk``-byte blocks (4 MiB).

    Raises :class:`OSError` (e.g. :class:`FileNotFoundError`) when the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """One JSON text per value: keys sorted, no whitespace, NaN/inf refused, other objects as ``str(obj)``.

    Raises :class:`ValueError` for a float NaN or infinity (their JSON spelling is not standard).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
