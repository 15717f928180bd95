"""Cityscapes (19 train ids), mmseg layout: ``cityscapes/leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
``cityscapes/gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``.

The train-id labels are what cityscapesscripts' ``createTrainIdLabelImgs`` (and mmseg's ``cityscapes.py``)
write. ``convert_cityscapes`` derives them from the shipped ``*_gtFine_labelIds.png`` with the official
id → trainId table (cityscapesscripts ``helpers/labels.py``), for folders that lack them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from phreg_bench.datasets.base import DatasetError, read_label, resolve_data_root
from phreg_bench.datasets.coco import write_png_atomic
from phreg_bench.datasets.layouts import FolderDataset

# cityscapesscripts helpers/labels.py: labelId -> trainId for the 19 evaluated classes; every other id -> 255.
LABEL_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def train_id_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.int64)
    for label_id, train_id in LABEL_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


class Cityscapes(FolderDataset):
    name = "cityscapes"
    folder = "cityscapes"
    image_dir = "leftImg8bit/{split_dir}"
    label_dir = "gtFine/{split_dir}"
    image_suffix = "_leftImg8bit.png"  # mmseg CityscapesDataset img_suffix
    label_suffix = "_gtFine_labelTrainIds.png"  # mmseg CityscapesDataset seg_map_suffix
    splits = ("train", "val", "test")
    expected_counts = {"train": 2975, "val": 500, "test": 1525}
    num_classes = 19
    raw_values = 19
    download_hint = ("Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (cityscapes-dataset.com) "
                     "into the data folder's cityscapes/, then run `phreg-bench data convert-cityscapes "
                     "--data-root DIR` (or cityscapesscripts' createTrainIdLabelImgs) for *_gtFine_labelTrainIds.png; "
                     "add --overwrite to rewrite ones that already exist, e.g. ones reported as bad.")


def convert_cityscapes(data_root: str | os.PathLike | None, splits: tuple[str, ...] = ("val", "train"),
                       overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` (kept if present)."""
    root = Cityscapes.locate(resolve_data_root(data_root))
    lut = train_id_lut()
    jobs, kept = [], 0
    for split in splits:
        folder = root / "gtFine" / split
        if not folder.is_dir():
            raise DatasetError(f"{folder} not found. {Cityscapes.download_hint}")
        for source in sorted(folder.rglob("*_gtFine_labelIds.png")):
            target = source.with_name(source.name.replace("_gtFine_labelIds.png", Cityscapes.label_suffix))
            if target.exists() and not overwrite:
                kept += 1
            else:
                jobs.append((source, target))
    for done, (source, target) in enumerate(jobs, 1):
        raw = read_label(source)
        if raw.max(initial=0) > 255 or raw.min(initial=0) < 0:
            raise DatasetError(f"{source} has values outside 0..255; is it a Cityscapes labelIds PNG?")
        write_png_atomic(target, lut[raw])
        if progress:
            progress(done, len(jobs))
    return {"converted": len(jobs), "kept": kept}
