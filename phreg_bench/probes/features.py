"""Frozen-backbone features for probes: extraction, cache identity and filling cache entries.

Features are ``DenseModel.forward_tokens(images)[0]`` (``project=False``): the final layer's patch tokens after
the final norm (width ``embed_dim``), and the CLS token ``prefix[:, 0]`` where a task needs it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from phreg_bench.geometry import center_pad
from phreg_bench.methods.base import DenseModel
from phreg_bench.probes.cache import CacheEntry, FeatureCache
from phreg_bench.progress import track
from phreg_core.distributed import DistEnv, all_sum_int, all_true, barrier, broadcast_bytes
from phreg_core.errors import ConfigError, PhregError


class FeatureRun(Protocol):
    """What the feature helpers read of a run: :class:`~phreg_bench.tasks.base.RunContext` has all of it, so a
    task passes its context as it is and this library does not depend on the task layer."""

    cache_dir: Path  # where persistent feature caches live (temporary ones too, under torchrun)
    device: torch.device
    progress: Any  # a rich.progress.Progress or None (phreg_bench.progress.track)
    options: dict[str, Any]  # family extras; ``feature_cache=False`` disables the persistent cache
    dist: DistEnv  # the torchrun process group


class CacheShareError(PhregError):
    """Under ``torchrun``, a rank cannot see the feature rows the other ranks wrote (no shared filesystem)."""

# Bump when the extraction code changes the cached bytes (enters every cache key).
FEATURE_CODE_VERSION = "1"


def open_cache(ctx: FeatureRun, model: DenseModel) -> tuple[FeatureCache, str]:
    """The run's feature cache, and why it is (not) persistent.

    Without a weights sha256 the features cannot be content-addressed safely, so they live in a temporary
    folder for this run only (fail-closed: never reused under a name that might not match the bytes).
    """
    if ctx.options.get("feature_cache") is False:
        return _temporary(ctx), "disabled by RunContext.options['feature_cache']"
    if not model.weights_sha256:
        return _temporary(ctx), "temporary: backbone has no weights sha256"
    return FeatureCache(ctx.cache_dir), "persistent"


def _temporary(ctx: FeatureRun) -> FeatureCache:
    """A cache for this run only. Under ``torchrun`` every rank must see the same one: rank 0 makes a folder
    in ``--cache-dir`` (a shared filesystem across nodes) and sends its path; rank 0 removes it on close."""
    if not ctx.dist.distributed:
        return FeatureCache(None)
    path = None
    if ctx.dist.is_main:
        Path(ctx.cache_dir).mkdir(parents=True, exist_ok=True)
        path = tempfile.mkdtemp(prefix=".phreg-features-", dir=ctx.cache_dir).encode()
    return FeatureCache(Path(broadcast_bytes(ctx.dist, path).decode()), temporary=True, owner=ctx.dist.is_main)


def cache_fields(model: DenseModel, ctx: FeatureRun, **fields: Any) -> dict[str, Any]:
    """Everything that changes the cached bytes (beyond the caller's geometry/dataset fields): the model's
    :meth:`~DenseModel.feature_identity`, the precision its forward runs at, the device type."""
    return {"model": model.feature_identity(), "code_version": FEATURE_CODE_VERSION,
            "precision": model.precision, "device_type": ctx.device.type, **fields}


def to_tensor(images: np.ndarray | Tensor) -> Tensor:
    """``[B, H, W, 3]`` pixels in 0..255 (uint8 or float) -> float ``[B, 3, H, W]`` in [0, 1]."""
    tensor = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    return tensor.permute(0, 3, 1, 2).float() / 255.0


@torch.inference_mode()
def extract(model: DenseModel, images: np.ndarray | Tensor, ctx: FeatureRun, *, pad_to_patch: bool = False,
            with_cls: bool = False) -> tuple[Tensor, Tensor | None]:
    """Unprojected final patch features ``[B, embed_dim, h, w]`` and, with ``with_cls``, the CLS token
    ``[B, embed_dim]`` (else ``None``), float32 on ``ctx.device``, of 0..255 ``[B, H, W, 3]`` images.

    ``(h, w) = (H, W) / patch_size``; ``H`` and ``W`` must be multiples of the patch size unless
    ``pad_to_patch`` zero-pads them (centred, in normalised space) up to the next multiple. The model's
    forward runs at its own precision (:meth:`DenseModel.set_precision`). Raises :class:`ConfigError` for
    ``with_cls`` on a model without a CLS token.
    """
    x = model.normalize(to_tensor(images).to(ctx.device))
    if pad_to_patch:
        x = center_pad(x, model.patch_size)
    out = model.forward_tokens(x)[0]
    cls = None
    if with_cls:
        if not model.has_class_token or out.prefix.shape[1] == 0:
            raise ConfigError(f"backbone {model.name!r} has no CLS token; the depth probe "
                             "concatenates patch tokens with the CLS token (DINOv2/DVT linear protocol)")
        cls = out.prefix[:, 0]
    return out.patches, cls


def fill(entry: CacheEntry, produce: Callable[[np.ndarray], dict[str, np.ndarray]], batch_rows: int,
         ctx: FeatureRun, description: str) -> dict[str, Any]:
    """Compute and store every missing row of ``entry``; returns counts and seconds.

    Under ``torchrun`` the rows are cut into fixed blocks of ``batch_rows`` and rank ``r`` computes the missing
    rows of blocks ``r, r + W, ...`` (the same split on every rank, whatever each saw as missing); after a
    barrier every rank adopts the others' rows (:meth:`CacheEntry.refresh`) and must see the entry complete.
    Raises :class:`CacheShareError` if it does not (``--cache-dir`` not shared between nodes).
    """
    env = ctx.dist
    missing = entry.missing_rows()
    start = time.perf_counter()
    chunks = [missing[i:i + batch_rows] for i in range(0, len(missing), batch_rows)]
    if env.distributed:  # rank r computes the missing rows of blocks r, r + W, ... (fixed blocks of all rows)
        block = (missing // batch_rows) % env.world_size == env.rank
        mine = missing[block]
        chunks = [mine[i:i + batch_rows] for i in range(0, len(mine), batch_rows)]
    for rows in track(chunks, description, progress=ctx.progress):
        entry.write(rows, produce(rows))
    entry.flush()
    computed = all_sum_int(env, sum(len(rows) for rows in chunks))
    if env.distributed:
        barrier(env)  # every rank has committed its rows
        entry.refresh()
        if not all_true(env, entry.complete):
            raise CacheShareError(
                f"feature cache {entry.path}: rows computed by other ranks are not visible here; under torchrun "
                "on several nodes --cache-dir (or $PHREG_CACHE) must be on a filesystem all nodes share")
    status = entry.status()
    status.update(computed_rows=int(computed), hit=computed == 0, seconds=round(time.perf_counter() - start, 3))
    return status
