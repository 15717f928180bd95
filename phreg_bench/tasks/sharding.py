"""What the task families share to run data-parallel under ``torchrun``.

Each family evaluates the images of :func:`phreg_core.distributed.shard` (rank ``r`` of ``W`` takes images
``r, r + W, ...``: every image exactly once), then reduces exactly — sums of int64 confusion matrices, or the
per-image values gathered in image order (:mod:`phreg_bench.metrics`) — so every rank holds the numbers one
process would have computed; only rank 0 writes the result (:mod:`phreg_bench.runner`). In one process every
helper here is the identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from phreg_core.distributed import DistEnv, all_gather_rows, broadcast_flag

T = TypeVar("T")


class RankFailed(RuntimeError):
    """Another rank failed first; this rank stops too (its own error is on that rank's log)."""


def rank_zero_first(env: DistEnv, compute: Callable[[], T]) -> T:
    """Run ``compute`` on rank 0, then on the other ranks (which then read what rank 0 cached).

    Used for the text embeddings: rank 0 computes them and writes the content-addressed text cache, the
    others find it there (on a shared filesystem) instead of encoding G times. If rank 0 fails, every rank
    raises (no rank is left waiting).
    """
    if not env.distributed:
        return compute()
    if env.is_main:
        try:
            value = compute()
        except BaseException:
            broadcast_flag(env, False)
            raise
        broadcast_flag(env, True)  # the broadcast is the barrier: the others wait here for rank 0
        return value
    if not broadcast_flag(env, False):
        raise RankFailed("rank 0 failed while computing what the other ranks wait for; see rank 0's error")
    return compute()


def gather_messages(env: DistEnv, items: list[tuple[int, str]]) -> list[str]:
    """Every rank's ``(global index, message)`` pairs, as messages in index order (e.g. skipped files)."""
    if not env.distributed:
        return [message for _, message in sorted(items)]
    payload = b"".join(f"{index}\t{message}".encode() + b"\0" for index, message in items)
    local = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.zeros(0, dtype=torch.uint8)
    merged = bytes(all_gather_rows(env, local).cpu().numpy().tobytes())
    pairs = []
    for chunk in merged.split(b"\0"):
        if chunk:
            index, _, message = chunk.decode().partition("\t")
            pairs.append((int(index), message))
    return [message for _, message in sorted(pairs)]
