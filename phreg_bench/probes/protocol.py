"""The probe protocol shared by the ``linseg`` and ``depth`` families (paper Table 2), in plain values.

* settings: :class:`ProbeSettings` (budget, feature mode, optimiser, schedule length) and
  :func:`resolve_budget` (the run's ``--budget`` flattened into a preset);
* the linear-segmentation geometry: :func:`resolve_input_size`, :func:`resolve_stride` (the published
  518 / 341 pair, :data:`PAPER_CROP` / :data:`PAPER_STRIDE`) and :class:`ViewTable`, the fixed S x S views of
  a split on :mod:`phreg_bench.geometry`'s window layout;
* the training stream: :func:`infinite_order` (mmengine's ``InfiniteSampler``) and :func:`train_limit`;
* the cache identity of a split: :func:`manifest`.

Nothing here reads a run context: callers pass the settings dict, the budget, the limit or the dataset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from phreg_bench.geometry import rescale_size, window_boxes
from phreg_bench.protocol_settings import NamedSettings, ProtocolError, require
from phreg_core.errors import ConfigError
from phreg_core.images import open_image

PAPER_STRIDE = 341  # slide stride with crop 518 [PH-Reg voc21_cfg.py test_cfg]
PAPER_CROP = 518
WINDOW_OPTION_NAMES = ("input_size", "slide_stride")  # the window size and stride as --protocol-override names


def resolve_budget(settings: dict[str, Any], budget: str) -> dict[str, Any]:
    """Flatten ``settings['budgets'][budget]`` into the settings and record the budget name."""
    budgets = settings.pop("budgets", None)
    if budgets is not None:
        if budget not in budgets:
            raise ProtocolError(f"--budget {budget}: not defined for this task (known: {', '.join(budgets)})")
        settings.update(budgets[budget])
    settings["budget"] = budget
    return settings


@dataclass(frozen=True, kw_only=True)
class ProbeSettings(NamedSettings):
    """What both probe families (``linseg``, ``depth``) share: budget, feature mode, optimiser, schedule length.

    ``budget`` is the run's ``--budget`` (its values are flattened into the preset), never an override.
    """

    RESERVED: ClassVar[tuple[str, ...]] = ("name", "budget")
    budget: str
    train_features: Literal["cached", "full"] = "cached"  # see phreg_bench.tasks.linseg's docstring
    cache_dtype: Literal["float16", "float32"] = "float16"  # storage dtype of cached features
    batch_size: int
    iters: int
    max_train_images: int | None = None  # cap on training images (quick budgets)
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    head_batchnorm: bool

    def validate(self) -> None:
        require("batch_size", self.batch_size > 0, f"must be > 0, got {self.batch_size}")
        require("iters", self.iters > 0, f"must be > 0, got {self.iters}")
        require("max_train_images", self.max_train_images is None or self.max_train_images > 0,
                f"must be null or > 0, got {self.max_train_images}")
        require("lr", self.lr > 0, f"must be > 0, got {self.lr}")
        require("weight_decay", self.weight_decay >= 0, f"must be >= 0, got {self.weight_decay}")
        require("betas", all(0 <= b < 1 for b in self.betas), f"must be two values in [0, 1), got {self.betas}")


def resolve_input_size(setting: Any, patch_size: int) -> int:
    """``auto``: 518 for patch-14 backbones (DINOv2 protocol), 448 otherwise (CLIP protocol, patch 16).

    Reference notes §2.2: "Input size: CLIP models 448x448, DINOv2 518x518".
    """
    size = (518 if patch_size == 14 else 448) if setting == "auto" else int(setting)
    if size % patch_size:
        raise ConfigError(f"input size {size} is not a multiple of the patch size {patch_size}; "
                         "set it with --protocol-override input_size=N")
    return size


def resolve_stride(setting: Any, size: int) -> int:
    """``auto``: the published 341 at 518, the same overlap ratio (341/518) at other sizes.

    Only the 518/341 pair is published (PH-Reg DINOv2 configs); the CLIP stride is UNCONFIRMED.
    """
    if setting != "auto":
        return int(setting)
    return PAPER_STRIDE if size == PAPER_CROP else max(1, round(size * PAPER_STRIDE / PAPER_CROP))


def image_size(dataset, index: int) -> tuple[int, int]:
    """``(H, W)`` of a sample, from the image header when the reader lists paths."""
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None:
        with open_image(pairs[index][1]) as image:  # header only; bad files raise one line naming them
            return image.height, image.width
    return tuple(dataset[index].image.shape[:2])


@dataclass
class ViewTable:
    """Fixed S x S views of a split: rows ``(sample, y1, y2, x1, x2, flip)`` on the resized images."""

    rows: np.ndarray  # int64 [R, 6]
    resized: list[tuple[int, int]]  # per sample (h', w') after the keep-ratio resize
    originals: list[tuple[int, int]]

    @classmethod
    def build(cls, dataset, size: int, stride: int, long_max: int, windows: str, flips: bool) -> ViewTable:
        rows, resized, originals = [], [], []
        for index in range(len(dataset)):
            height, width = image_size(dataset, index)
            h, w = rescale_size(height, width, min(long_max, size), max(long_max, size))  # mmcv scale order
            originals.append((height, width))
            resized.append((h, w))
            boxes = window_boxes(h, w, size, stride, names=WINDOW_OPTION_NAMES)
            if windows == "center":
                boxes = [boxes[len(boxes) // 2]]
            for box in boxes:
                for flip in ((0, 1) if flips else (0,)):
                    rows.append((index, *box, flip))
        return cls(np.asarray(rows, dtype=np.int64).reshape(-1, 6), resized, originals)

    def rows_of(self, sample: int) -> np.ndarray:
        return np.flatnonzero(self.rows[:, 0] == sample)


def infinite_order(num_items: int, length: int, seed: int) -> np.ndarray:
    """Concatenated random permutations (mmengine ``InfiniteSampler(shuffle=True)``), ``length`` long."""
    if num_items == 0:
        raise ConfigError("no training samples")
    rng = np.random.default_rng(seed)
    epochs = -(-length // num_items)
    return np.concatenate([rng.permutation(num_items) for _ in range(epochs)])[:length]


def train_limit(settings: dict[str, Any], limit: int | None) -> int | None:
    """Training images to read: the smaller of ``max_train_images`` and the run's ``--limit`` (None: all)."""
    limits = [value for value in (settings.get("max_train_images"), limit) if value is not None]
    return min(int(v) for v in limits) if limits else None


def manifest(dataset) -> str:
    """What identifies a split's files in a feature-cache key: the reader's own ``manifest()``, else the
    sha256 of every listed pair's ids and file sizes."""
    if hasattr(dataset, "manifest"):
        return dataset.manifest()
    digest = hashlib.sha256()
    for sample_id, image_path, label_path in getattr(dataset, "pairs", []):
        digest.update(f"{sample_id}:{image_path.stat().st_size}:{label_path.stat().st_size}\n".encode())
    return digest.hexdigest()
