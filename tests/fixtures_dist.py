"""Multi-process helpers for the ``torch.distributed`` (gloo, CPU) tests.

:func:`run_ranks` forks W processes that join one gloo group through the same environment variables
``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), so the code under
test takes its real ``torchrun`` path; forking (not spawning) keeps each test to seconds because torch is
already imported. :func:`dying_clip_factory` is the tiny CLIP of ``fixtures_seg`` whose rank
``PHREG_TEST_DIE_RANK`` kills itself (SIGKILL) on its second image, for the killed-group test.
"""

from __future__ import annotations

import os
import signal
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp

from phreg_bench.backbones.base import Backbone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple, errors: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), PHREG_DIST_TIMEOUT_S="120")
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    except BaseException:
        Path(errors, f"rank{rank}.txt").write_text(traceback.format_exc())
        raise


def run_ranks(world: int, fn: Callable, *args, errors_dir: Path) -> None:
    """Run ``fn(rank, *args)`` in ``world`` forked processes of one gloo group; raise with any rank's traceback."""
    errors_dir.mkdir(parents=True, exist_ok=True)
    try:
        mp.start_processes(_entry, args=(world, free_port(), fn, args, str(errors_dir)), nprocs=world,
                           join=True, start_method="fork")
    except Exception as error:
        reports = "\n".join(p.read_text() for p in sorted(errors_dir.glob("rank*.txt")))
        raise AssertionError(f"a rank failed: {error}\n{reports}") from error


def dying_clip_factory(argument: str | None = None, *, name: str = "tiny-clip", weights: str | None = None,
                       random_init: bool = True, **options) -> Backbone:
    """``fixtures_seg.tiny_clip_factory``, except that rank ``$PHREG_TEST_DIE_RANK`` dies on its 2nd image."""
    from fixtures_seg import tiny_clip_factory

    backbone = tiny_clip_factory(argument, name=name, weights=weights, random_init=random_init, **options)
    target = os.environ.get("PHREG_TEST_DIE_RANK")
    if target is not None and os.environ.get("RANK") == target:
        original, calls = backbone.forward_tokens, [0]

        def forward_tokens(*a, **k):  # what method "raw" calls once per window batch
            calls[0] += 1
            if calls[0] >= 2:
                if os.environ.get("PHREG_TEST_DIE_HOW") == "raise":
                    raise RuntimeError("injected failure")
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*a, **k)

        backbone.forward_tokens = forward_tokens
    return backbone
