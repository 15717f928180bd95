"""Content-addressed cache of denoised teacher targets (``--cache-targets DIR``).

PH-Reg recomputes the 10-view teacher pass for every image of every epoch (paper App. D: nothing is
stored). That pass dominates a step, so this cache computes each target once and reuses it.

Key: sha256 over the teacher identity (architecture, weights hash, last block, projection), the TTA
settings, the exact view plan (offsets and flips), the target dtype and the bytes of the preprocessed image.
Anything that changes the target changes the key; a mismatch is a miss, never a silent reuse.

Disk cost per image = grid² × channels × bytes per value (+ ~100 B of header):

===============================  ===========  ========  =======  ==============================
tower                            grid         channels  float16  Flickr30k (31,783 images), fp16
===============================  ===========  ========  =======  ==============================
CLIP ViT-B/16 at 448 (512-d)     28 × 28      512       0.80 MB  25.5 GB
DINOv2 ViT-B/14 at 518 (768-d)   37 × 37      768       2.10 MB  66.8 GB
===============================  ===========  ========  =======  ==============================

(float32 doubles these.) The trade-off: a target is only reusable for the same crop and view plan, so a
cached run fixes each image's random square crop and its 10 views for the whole run (drawn once from
``(seed, index)``), where the official trainer draws new crops and views every epoch. Per-epoch crop
randomness is lost; the teacher pass is paid once instead of once per epoch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from phreg_core.atomic import write_atomic
from phreg_core.errors import ConfigError
from phreg_core.hashing import canonical_json
from phreg_core.tta import ViewPlan

__all__ = ["CACHE_DTYPES", "TargetCache", "image_digest"]

CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def image_digest(image: Tensor) -> str:
    """sha256 of a preprocessed image (shape + float32 bytes); computed in data workers when caching."""
    cpu = image.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(str(tuple(cpu.shape)).encode())
    digest.update(cpu.numpy().tobytes())
    return digest.hexdigest()


class TargetCache:
    """One safetensors file per target under ``root/ab/abcdef...safetensors``."""

    def __init__(self, root: str | Path, identity: dict[str, Any], dtype: str = "float16"):
        if dtype not in CACHE_DTYPES:
            raise ConfigError(f"cache dtype {dtype!r} is not one of {sorted(CACHE_DTYPES)}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dtype = dtype
        self.prefix = canonical_json({"identity": identity, "dtype": dtype}).encode()
        self.hits = 0
        self.misses = 0

    def key(self, image: Tensor | str, plan: ViewPlan) -> str:
        """Key of one target: ``image`` is the preprocessed image or its :func:`image_digest`."""
        digest = hashlib.sha256(self.prefix)
        digest.update(canonical_json(plan.to_list()).encode())
        digest.update((image if isinstance(image, str) else image_digest(image)).encode())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> Tensor | None:
        """The stored target (in the cache dtype) or None; a damaged entry is a miss and gets rewritten."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.exists():
            return None
        try:
            return load_file(str(path))["target"]
        except (SafetensorError, KeyError, OSError):
            return None

    def put(self, key: str, target: Tensor) -> None:
        """Store one target ``[C, h, w]`` in the cache dtype (atomically: a reader never sees half a file)."""
        from safetensors import SafetensorError
        from safetensors.torch import save_file

        stored = {"target": target.detach().to("cpu", CACHE_DTYPES[self.dtype]).contiguous()}
        write_atomic(self.path(key), lambda temp: save_file(stored, temp), suffix=".safetensors",
                     io_errors=(SafetensorError,))

    def put_many(self, keys: list[str], targets: Tensor) -> None:
        """Store a batch of targets ``[B, C, h, w]`` (one device-to-host copy)."""
        host = targets.detach().to("cpu", CACHE_DTYPES[self.dtype])
        for key, target in zip(keys, host, strict=True):
            self.put(key, target)

