"""Training images for distillation: a folder of images, a Hugging Face dataset, or tensors in memory.

Preprocessing follows PH-Reg's training code (``CLIP/datasets/flickr30k_dataset.py``): resize the short
side to the training resolution (bicubic), take a random square crop along the long side
(``RandomSquareCropPreservingShortEdge``), convert to a tensor and normalise with the backbone's mean/std.

Every dataset item is a dict ``{"index": i, "image": [3, R, R] tensor}``, or ``None`` for a file that
cannot be decoded (skipped with a one-line warning naming it, and counted by :func:`collate`, never fatal).
Files are read as RGB by :mod:`phreg_core.images` (every Pillow mode converted explicitly or refused: 16-bit
greyscale is scaled by its bit depth, alpha is dropped; decompression bombs and truncated files are
refused). Crop positions are drawn from ``(seed, epoch, index)`` so that runs, resumes and processes
agree; ``fixed_crops=True`` makes them independent of the epoch (what a teacher-target cache needs).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from phreg_core.errors import ConfigError, MissingDependencyError, MissingFileError
from phreg_core.images import ImageReadError, open_rgb, to_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "Batch",
    "HFImageDataset",
    "ImageFolderDataset",
    "TensorImageDataset",
    "collate",
    "list_images",
    "preprocess",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def list_images(root: str | Path) -> list[Path]:
    """Every jpg/png/webp file under ``root`` (recursive, case-insensitive), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"training images folder {root} does not exist; pass --data DIR with images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise MissingFileError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {root}")
    return files


def crop_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, 0x43524F50])  # "CROP": a stream apart from views


def preprocess(image, resolution: int, mean: Sequence[float], std: Sequence[float],
               rng: np.random.Generator, source: str = "<image>") -> Tensor:
    """PIL image (any mode, see :func:`phreg_core.images.to_rgb`) -> normalised ``[3, R, R]``: short side to
    R (bicubic), random square crop, normalise. ``source`` names the image in errors."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = to_rgb(image, source)
    image = TF.resize(image, resolution, interpolation=InterpolationMode.BICUBIC)
    width, height = image.size
    left = int(rng.integers(0, width - resolution, endpoint=True)) if width > resolution else 0
    top = int(rng.integers(0, height - resolution, endpoint=True)) if height > resolution else 0
    image = TF.crop(image, top, left, resolution, resolution)
    tensor = TF.to_tensor(image)
    return TF.normalize(tensor, list(mean), list(std))


class _EpochDataset(Dataset):
    """Shared epoch/seed handling for datasets with random crops."""

    def __init__(self, resolution: int, mean: Sequence[float], std: Sequence[float], seed: int = 0,
                 fixed_crops: bool = False):
        self.resolution = int(resolution)
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed = seed
        self.fixed_crops = fixed_crops
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return crop_rng(self.seed, 0 if self.fixed_crops else self.epoch, index)


class ImageFolderDataset(_EpochDataset):
    """Images found recursively under ``root``."""

    def __init__(self, root: str | Path, resolution: int, mean: Sequence[float], std: Sequence[float],
                 seed: int = 0, fixed_crops: bool = False):
        super().__init__(resolution, mean, std, seed, fixed_crops)
        self.root = Path(root)
        self.files = list_images(root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        path = self.files[index]
        try:
            image = open_rgb(path)
        except ImageReadError as error:
            warnings.warn(f"skipping: {error}", stacklevel=2)
            return None
        return {"index": index, "image": preprocess(image, self.resolution, self.mean, self.std, self._rng(index))}


class HFImageDataset(_EpochDataset):
    """A Hugging Face ``datasets`` split (or any indexable of dicts) with a PIL/bytes image column."""

    def __init__(self, data, resolution: int, mean: Sequence[float], std: Sequence[float],
                 image_column: str = "image", seed: int = 0, fixed_crops: bool = False):
        super().__init__(resolution, mean, std, seed, fixed_crops)
        self.data = data
        self.image_column = image_column

    @classmethod
    def from_hub(cls, name: str, split: str = "train", **kwargs) -> HFImageDataset:
        try:
            import datasets
        except ImportError as error:
            raise MissingDependencyError("Hugging Face datasets are optional: pip install 'phreg-bench[hf]'") from error
        try:
            data = datasets.load_dataset(name, split=split)
        except (OSError, ValueError) as error:  # not found (FileNotFoundError), no network, unknown split
            raise MissingFileError(f"Hugging Face dataset {name!r} (split {split!r}) cannot be loaded: "
                                   f"{' '.join(str(error).split())}") from error
        return cls(data, **kwargs)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        import io

        name = f"row #{index} ({self.image_column!r})"
        try:
            value = self.data[index][self.image_column]
            if isinstance(value, dict):  # undecoded datasets.Image: {"bytes": ..., "path": ...}
                if value.get("bytes"):
                    value = open_rgb(io.BytesIO(value["bytes"]), name)
                else:
                    value = open_rgb(value["path"], f"{name}: {value['path']}")
            elif isinstance(value, (bytes, bytearray)):
                value = open_rgb(io.BytesIO(value), name)
            else:
                value = to_rgb(value, name)
        except KeyError as error:
            raise KeyError(f"{name}: the dataset has no image column {self.image_column!r}; set image_column") \
                from error
        except ImageReadError as error:
            warnings.warn(f"skipping: {error}", stacklevel=2)
            return None
        return {"index": index, "image": preprocess(value, self.resolution, self.mean, self.std, self._rng(index))}


class TensorImageDataset(Dataset):
    """Already normalised images ``[N, 3, R, R]`` (or a list of ``[3, R, R]``) kept in memory."""

    def __init__(self, images: Tensor | Sequence[Tensor]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "image": self.images[index]}


@dataclass
class Batch:
    indices: Tensor  # [B] dataset indices (they seed the view plans)
    images: Tensor  # [B, 3, R, R]
    corrupt: int  # items of this batch that could not be decoded
    epochs: list[int] | None = None  # the epoch each item was drawn for (trainer keys)

    def __len__(self) -> int:
        return len(self.indices)

    def pin_memory(self) -> Batch:
        return Batch(self.indices.pin_memory(), self.images.pin_memory(), self.corrupt, self.epochs)


def collate(items: list[dict[str, Any] | None]) -> Batch:
    """Stack the readable items; count the rest."""
    good = [item for item in items if item is not None]
    corrupt = len(items) - len(good)
    if not good:
        return Batch(torch.zeros(0, dtype=torch.long), torch.zeros(0), corrupt)
    shapes = {tuple(item["image"].shape) for item in good}
    if len(shapes) > 1:
        raise ConfigError(f"images of one batch have different shapes {sorted(shapes)}; crop them to one size")
    indices = torch.tensor([int(item["index"]) for item in good], dtype=torch.long)
    epochs = [int(item["epoch"]) for item in good] if all("epoch" in item for item in good) else None
    return Batch(indices, torch.stack([item["image"] for item in good]), corrupt, epochs)
