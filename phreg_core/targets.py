"""The distillation targets: each image's view plan, the teacher-target cache and the TTA-denoised teacher pass.

A :class:`TargetSource` owns the whole path from a batch of dataset items to the targets ``[B, C, h, w]``:

1. in the data workers (:meth:`TargetSource.collate`): stack the items, draw each image's view plan from
   ``(seed, epoch, dataset index)`` (:func:`view_rng`; with a cache, from epoch 0: a cached target is valid
   for one plan), look up cached targets and build the view indices of the rest;
2. on the device (:meth:`TargetSource.targets`): run the views of the images without a cached target
   through the frozen teacher in one pass (``no_grad``, bf16 autocast when asked) and average them back
   (float32), store them in the cache, and merge them with the cached ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from phreg_core.data import Batch, collate
from phreg_core.errors import ConfigError
from phreg_core.target_cache import TargetCache, image_digest
from phreg_core.tta import TTADenoiser, ViewIndex, ViewPlan, patch_teacher, plan_views, view_index

__all__ = ["StepBatch", "TargetSource", "view_rng"]


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one image's TTA views (a stream apart from its crop)."""
    return np.random.default_rng([seed, epoch, index, 0x56494557])  # "VIEW"


@dataclass
class StepBatch:
    """A batch with everything the step needs prepared off the device's path (in the data workers).

    ``plans`` for every image; with a cache, ``keys`` and the ``cached`` targets (stacked, for the images
    in ``hit``); ``view_index`` covers the images in ``missing`` (all of them without a cache).
    """

    batch: Batch
    plans: list[ViewPlan]
    missing: list[int]
    view_index: ViewIndex | None
    keys: list[str] | None = None
    hit: list[int] = field(default_factory=list)
    cached: Tensor | None = None

    def __len__(self) -> int:
        return len(self.batch)

    def pin_memory(self) -> StepBatch:
        return replace(self, batch=self.batch.pin_memory(),
                       view_index=self.view_index.pin_memory() if self.view_index is not None else None,
                       cached=self.cached.pin_memory() if self.cached is not None else None)


class _Prepare:
    """Collate function: stack the items, draw their view plans, look up cached targets, build view indices.

    Holds no model, so it travels cheaply to data-loader worker processes.
    """

    def __init__(self, seed: int, views: int, shift_frac: float, patch_size: int, cache: TargetCache | None):
        self.seed, self.views, self.shift_frac, self.patch_size = seed, views, shift_frac, patch_size
        self.cache = cache

    def __call__(self, items) -> StepBatch:
        batch = collate(items)
        if len(batch) == 0:
            return StepBatch(batch, [], [], None)
        height, width = batch.images.shape[-2:]
        grid = (height // self.patch_size, width // self.patch_size)
        epochs = batch.epochs or [0] * len(batch)
        plans = [plan_views(view_rng(self.seed, 0 if self.cache is not None else epoch, int(index)), grid,
                            self.views, self.shift_frac)  # cached runs fix each image's views (target_cache.py)
                 for index, epoch in zip(batch.indices, epochs, strict=True)]
        out = StepBatch(batch, plans, list(range(len(batch))), None)
        if self.cache is not None:
            out.keys = [self.cache.key(image_digest(image), plan) for image, plan in zip(batch.images, plans,
                                                                                        strict=True)]
            found = [self.cache.load(key) for key in out.keys]
            out.hit = [i for i, target in enumerate(found) if target is not None]
            out.missing = [i for i, target in enumerate(found) if target is None]
            if out.hit:
                out.cached = torch.stack([found[i] for i in out.hit])
        if out.missing:
            out.view_index = view_index([plans[i] for i in out.missing], self.patch_size, height, width)
        return out


class TargetSource:
    """TTA-denoised teacher targets for distillation batches, computed or read from a cache.

    ``teacher`` maps normalised images ``[B, 3, H, W]`` to patch features ``[B, C, h, w]``; ``fill`` is the
    normalised white of its preprocessing; ``views``/``shift_frac``/``seed`` are the recipe's. With
    ``cache_dir``, targets are cached in ``cache_dtype`` (content-addressed, :mod:`phreg_core.target_cache`)
    under the teacher's identity: ``teacher_id``, else ``teacher.describe()`` with ``weights_sha256`` (a
    :class:`ConfigError` names what is missing); a cached run fixes each image's views for the whole run.
    ``bf16`` runs the teacher under bf16 autocast.
    """

    def __init__(self, teacher: Callable[[Tensor], Tensor], patch_size: int, fill: Sequence[float], *, views: int,
                 shift_frac: float, seed: int, device: torch.device, bf16: bool,
                 cache_dir: str | Path | None = None, cache_dtype: str = "float16",
                 teacher_id: dict[str, Any] | None = None, weights_sha256: str | None = None):
        # the trainer's only TTADenoiser: the teacher pass over all B·N views and the average back
        self.denoiser = TTADenoiser(patch_size, fill)
        self.teacher = patch_teacher(teacher)
        self.views, self.shift_frac, self.seed = views, shift_frac, seed
        self.device, self.bf16 = device, bf16
        self.cache: TargetCache | None = None
        if cache_dir is not None:
            identity = self._cache_identity(teacher, teacher_id, weights_sha256)
            self.cache = TargetCache(cache_dir, identity, cache_dtype)
        self.collate = _Prepare(seed, views, shift_frac, patch_size, self.cache)

    @property
    def patch_size(self) -> int:
        return self.denoiser.patch_size

    @property
    def hits(self) -> int:
        return self.cache.hits if self.cache is not None else 0

    @property
    def misses(self) -> int:
        return self.cache.misses if self.cache is not None else 0

    def _cache_identity(self, teacher: Callable[[Tensor], Tensor], teacher_id: dict[str, Any] | None,
                        weights_sha256: str | None) -> dict[str, Any]:
        """What a cached target depends on besides the image and its plan: the teacher and the TTA settings."""
        if teacher_id is not None:
            described = teacher_id
        elif hasattr(teacher, "describe"):
            described = teacher.describe()
            if weights_sha256 is None:
                raise ConfigError("caching targets needs the teacher's weights identity: pass "
                                  "base_weights_sha256 (or teacher_id)")
        else:
            raise ConfigError("caching targets of a custom teacher needs teacher_id (a dict naming the teacher "
                              "and its weights) so that cache keys change when the teacher does")
        return {"teacher": described, "weights": weights_sha256, "views": self.views, "shift_frac": self.shift_frac,
                "fill": list(self.denoiser.fill), "patch_size": self.patch_size}

    def targets(self, step: StepBatch, images: Tensor) -> Tensor:
        """Denoised targets ``[B, C, h, w]`` (float32) of ``images`` (``step``'s images on the device)."""
        computed = None
        if step.missing:
            index = step.view_index.to(self.device, non_blocking=True)
            subset = images if len(step.missing) == len(step) else images[step.missing]
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                plans = [step.plans[i] for i in step.missing]
                computed = self.denoiser(self.teacher, subset, plans, index)[0].patches.float()
            if self.cache is not None:
                self.cache.misses += len(step.missing)
                self.cache.put_many([step.keys[i] for i in step.missing], computed)
        if not step.hit:
            return computed
        self.cache.hits += len(step.hit)
        cached = step.cached.to(self.device, non_blocking=True).float()
        if computed is None:
            return cached
        targets = torch.empty((len(step), *cached.shape[1:]), device=self.device, dtype=torch.float32)
        targets[step.hit] = cached
        targets[step.missing] = computed
        return targets
