"""COCO-Stuff164k (171 classes) and COCO-Object (background + 80 things), and their label converters.

Layout (mmseg): ``coco_stuff164k/images/{train,val}2017/*.jpg`` and ``coco_stuff164k/annotations/{train,val}2017/``
holding the raw ``stuffthingmaps_trainval2017`` PNGs (``<id>.png``: COCO ids 0..181 with 11 unused, 255 =
unlabeled) plus the converted labels this module writes next to them:

* ``<id>_labelTrainIds.png`` — COCO-Stuff164k train ids 0..170 (mmseg's ``coco_stuff164k.py`` table);
* ``<id>_instanceTrainIds.png`` — COCO-Object: 0 = background (every stuff class *and* unlabeled),
  1..80 = things (``sinahmr/NACLIP:datasets/cvt_coco_object.py``, from GroupViT).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from phreg_bench.datasets.base import DatasetError, read_label, resolve_data_root
from phreg_bench.datasets.layouts import FolderDataset
from phreg_core.atomic import write_atomic
from phreg_core.errors import ConfigError

# COCO category ids absent from COCO-Stuff164k's 182-id range (mmseg coco_stuff164k.py clsID_to_trID skips them).
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
STUFF_RAW_IDS = tuple(i for i in range(182) if i not in UNUSED_IDS)  # 171 ids; position = train id
LAST_THING_ID = 90  # ids <= 90 are things, > 90 stuff (cvt_coco_object.py: `if k > 90: ... = 0`)
UNMAPPED = -1

COCO_HINT = ("Download the COCO 2017 train/val images and stuffthingmaps_trainval2017.zip into the data folder "
             "as coco_stuff164k/images/{train,val}2017 and coco_stuff164k/annotations/{train,val}2017")


def stuff_lut() -> np.ndarray:
    """Raw COCO id → COCO-Stuff164k train id (0..170); 255 stays 255; unused ids are errors."""
    lut = np.full(256, UNMAPPED, dtype=np.int64)
    lut[list(STUFF_RAW_IDS)] = np.arange(len(STUFF_RAW_IDS))
    lut[255] = 255
    return lut


def object_lut() -> np.ndarray:
    """Raw COCO id → COCO-Object id: things → 1..80, stuff and unlabeled (255) → 0 (background)."""
    lut = np.full(256, UNMAPPED, dtype=np.int64)
    for train_id, raw in enumerate(STUFF_RAW_IDS):
        lut[raw] = train_id + 1 if raw <= LAST_THING_ID else 0
    lut[255] = 0  # cvt_coco_object.py maps 255 (> 90) to background as well
    return lut


class COCOStuff(FolderDataset):
    name = "coco_stuff164k"
    folder = "coco_stuff164k"
    image_dir = "images/{split_dir}"
    label_dir = "annotations/{split_dir}"
    image_suffix = ".jpg"
    label_suffix = "_labelTrainIds.png"  # mmseg COCOStuffDataset seg_map_suffix
    split_dirs = {"train": "train2017", "val": "val2017"}
    splits = ("train", "val")
    expected_counts = {"train": 118287, "val": 5000}
    num_classes = 171
    raw_values = 171
    download_hint = (f"{COCO_HINT}, then run `phreg-bench data convert-coco-stuff --data-root DIR` "
                     "(or mmseg's tools/dataset_converters/coco_stuff164k.py); add --overwrite to rewrite label "
                     "files that already exist, e.g. ones reported as bad.")


class COCOObject(COCOStuff):
    name = "coco_object"
    label_suffix = "_instanceTrainIds.png"  # NACLIP COCOObjectDataset seg_map_suffix
    num_classes = 81
    raw_values = 81
    has_background = True
    download_hint = (f"{COCO_HINT}, then run `phreg-bench data convert-coco-object --data-root DIR` "
                     "(same output as NACLIP's datasets/cvt_coco_object.py); add --overwrite to rewrite label "
                     "files that already exist, e.g. ones reported as bad.")


# -- converters ---------------------------------------------------------------------------------------
def write_png_atomic(path: Path, label: np.ndarray) -> None:
    write_atomic(path, lambda temp: Image.fromarray(label.astype(np.uint8), mode="L").save(temp, format="PNG"))


def convert_file(source: Path, target: Path, lut: np.ndarray) -> None:
    raw = read_label(source)
    mapped = lut[np.clip(raw, 0, 255)]
    if (mapped == UNMAPPED).any() or raw.max(initial=0) > 255:
        values = sorted(set(np.unique(raw[(mapped == UNMAPPED) | (raw > 255)]).tolist()))[:8]
        raise DatasetError(f"{source} has values {values} that are not COCO-Stuff ids; is it a raw "
                           "stuffthingmaps_trainval2017 PNG?")
    write_png_atomic(target, mapped)


def raw_annotations(folder: Path) -> Iterator[Path]:
    """Raw stuffthingmaps PNGs of one split folder (names without 'TrainIds')."""
    return (p for p in sorted(folder.glob("*.png")) if "TrainIds" not in p.name)


def _convert_one(job: tuple[Path, Path, str]) -> str:
    source, target, kind = job
    convert_file(source, target, stuff_lut() if kind == "stuff" else object_lut())
    return str(target)


def convert_coco(data_root: str | os.PathLike | None, kind: str, splits: tuple[str, ...] = ("val", "train"),
                 workers: int = 1, overwrite: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write ``_labelTrainIds.png`` (``kind="stuff"``) or ``_instanceTrainIds.png`` (``kind="object"``) next to
    every raw annotation. Existing outputs are kept (the conversion resumes) unless ``overwrite``."""
    if kind not in ("stuff", "object"):
        raise ConfigError(f"kind must be 'stuff' or 'object', got {kind!r}")
    reader = COCOStuff if kind == "stuff" else COCOObject
    root = reader.locate(resolve_data_root(data_root))
    jobs, kept = [], 0
    for split in splits:
        folder = root / "annotations" / reader.split_dirs[split]
        if not folder.is_dir():
            raise DatasetError(f"{folder} not found. {COCO_HINT}.")
        for source in raw_annotations(folder):
            target = source.with_name(source.stem + reader.label_suffix)
            if target.exists() and not overwrite:
                kept += 1
                continue
            jobs.append((source, target, kind))
    done = 0
    if workers > 1 and len(jobs) > 1:
        from multiprocessing import Pool

        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_convert_one, jobs, chunksize=64):
                done += 1
                if progress:
                    progress(done, len(jobs))
    else:
        for job in jobs:
            _convert_one(job)
            done += 1
            if progress:
                progress(done, len(jobs))
    return {"converted": done, "kept": kept}
