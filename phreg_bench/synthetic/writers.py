"""Write the synthetic world to disk in the layouts the real dataset readers load.

* VOC (``VOCdevkit/VOC2012``): ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG with the
  VOC colour map, index = class id), ``ImageSets/Segmentation/{train,val,trainval}.txt``; the ``train_aug``
  split is mirrored in ``SegmentationClassAug`` + ``ImageSets/Segmentation/train_aug.txt``.
* ADE20K (``ade/ADEChallengeData2016``): ``images/{training,validation}/<id>.jpg`` and grayscale
  ``annotations/.../<id>.png`` holding class id + 1 (0 is ADE's "other", removed by ``reduce_zero_label``).
* NYUv2, BTS "sync" layout (``nyu_depth_v2``): ``sync/synthetic/rgb_*.jpg`` + ``sync_depth_*.png`` (train) and
  ``official_splits/test/synthetic/...`` (test), depth as uint16 millimetres, listed in ``nyu_train.txt`` /
  ``nyu_test.txt`` as ``<rgb> <depth> <focal>``.

Class ids are the synthetic ones (:data:`~phreg_bench.synthetic.scenes.CLASS_NAMES`, 9 classes), stored
in the datasets' index ranges; they are not VOC's or ADE's semantic classes. Training scenes are indices
``0..n_train-1``, validation/test scenes start at 100 000 (the in-memory task's validation range). Every file
is written atomically; writing again overwrites with identical content.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from phreg_bench.synthetic.scenes import render
from phreg_core.atomic import write_atomic

VAL_START = 100_000
NYU_FOCAL = 518.8579  # the focal length BTS lists for every NYUv2 frame (nyudepthv2_*_files_with_gt.txt)
JPEG_QUALITY = 95


def voc_palette() -> list[int]:
    """The 256-entry PASCAL VOC colour map (``VOCdevkit``'s ``labelcolormap``), flattened RGB."""
    palette = []
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [r, g, b]
    return palette


def _atomic_save(path: Path, save: Callable[[str], None]) -> None:
    write_atomic(path, save, suffix=path.suffix)


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    _atomic_save(path, lambda tmp: Image.fromarray(image).save(tmp, format="JPEG", quality=JPEG_QUALITY))


def _save_png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """uint8 -> grayscale (or palette, with ``palette``: indices are kept) PNG; uint16 -> 16-bit PNG."""
    picture = Image.fromarray(array)
    if palette is not None:
        picture.putpalette(palette)  # an "L" image becomes "P" with the same indices
    _atomic_save(path, lambda tmp: picture.save(tmp, format="PNG"))


def _write_text(path: Path, lines: Iterable[str]) -> None:
    text = "".join(f"{line}\n" for line in lines)
    _atomic_save(path, lambda tmp: Path(tmp).write_text(text))


def _splits(n_train: int, n_val: int) -> dict[str, list[int]]:
    return {"train": list(range(n_train)), "val": list(range(VAL_START, VAL_START + n_val))}


def write_voc(root: str | os.PathLike, n_train: int = 16, n_val: int = 8, size: int = 64, seed: int = 0) -> Path:
    """``root/VOCdevkit/VOC2012`` with the train, val, trainval and train_aug splits."""
    folder = Path(root) / "VOCdevkit" / "VOC2012"
    palette = voc_palette()
    ids: dict[str, list[str]] = {}
    for split, indices in _splits(n_train, n_val).items():
        ids[split] = []
        for index in indices:
            sample_id = f"synthetic_{index:06d}"
            scene = render(index, size, seed)
            label = scene.labels.astype(np.uint8)
            _save_jpeg(folder / "JPEGImages" / f"{sample_id}.jpg", scene.image)
            _save_png(folder / "SegmentationClass" / f"{sample_id}.png", label, palette)
            if split == "train":
                _save_png(folder / "SegmentationClassAug" / f"{sample_id}.png", label, palette)
            ids[split].append(sample_id)
    sets = folder / "ImageSets" / "Segmentation"
    _write_text(sets / "train.txt", ids["train"])
    _write_text(sets / "val.txt", ids["val"])
    _write_text(sets / "trainval.txt", ids["train"] + ids["val"])
    _write_text(sets / "train_aug.txt", ids["train"])
    return folder


def write_ade(root: str | os.PathLike, n_train: int = 16, n_val: int = 8, size: int = 64, seed: int = 0) -> Path:
    """``root/ade/ADEChallengeData2016`` with ``training`` and ``validation``; labels stored as id + 1."""
    folder = Path(root) / "ade" / "ADEChallengeData2016"
    for split, indices in _splits(n_train, n_val).items():
        split_dir = {"train": "training", "val": "validation"}[split]
        for index in indices:
            sample_id = f"synthetic_{index:06d}"
            scene = render(index, size, seed)
            _save_jpeg(folder / "images" / split_dir / f"{sample_id}.jpg", scene.image)
            _save_png(folder / "annotations" / split_dir / f"{sample_id}.png", (scene.labels + 1).astype(np.uint8))
    return folder


def write_nyu(root: str | os.PathLike, n_train: int = 16, n_test: int = 8, size: int = 64, seed: int = 0) -> Path:
    """``root/nyu_depth_v2`` in the BTS "sync" layout (uint16 millimetre depth PNGs and split lists)."""
    folder = Path(root) / "nyu_depth_v2"
    bases = {"train": "sync/synthetic", "val": "official_splits/test/synthetic"}
    lists: dict[str, list[str]] = {"train": [], "val": []}
    for split, indices in _splits(n_train, n_test).items():
        for index in indices:
            scene = render(index, size, seed)
            rgb = f"{bases[split]}/rgb_{index:06d}.jpg"
            depth = f"{bases[split]}/sync_depth_{index:06d}.png"
            millimetres = np.round(scene.depth * 1000.0).astype(np.uint16)  # depth_scale = 1000 (BTS / toolbox)
            _save_jpeg(folder / rgb, scene.image)
            _save_png(folder / depth, millimetres)
            lists[split].append(f"{rgb} {depth} {NYU_FOCAL}")
    _write_text(folder / "nyu_train.txt", lists["train"])
    _write_text(folder / "nyu_test.txt", lists["val"])
    return folder


def write_all(root: str | os.PathLike, n_train: int = 16, n_val: int = 8, size: int = 64,
              seed: int = 0) -> dict[str, Path]:
    """All three layouts under one data root (what ``--data-root`` expects)."""
    return {
        "voc": write_voc(root, n_train, n_val, size, seed),
        "ade": write_ade(root, n_train, n_val, size, seed),
        "nyu": write_nyu(root, n_train, n_val, size, seed),
    }
