"""ADE20K (SceneParsing, 150 classes), mmseg layout ``ade/ADEChallengeData2016/{images,annotations}/
{training,validation}``. Raw labels are 0 (other) .. 150; mmseg's ``ADE20KDataset`` uses
``reduce_zero_label=True`` so "other" becomes ignore and the classes are 0..149."""

from __future__ import annotations

from phreg_bench.datasets.layouts import FolderDataset


class ADE20K(FolderDataset):
    name = "ade20k"
    folder = "ade/ADEChallengeData2016"
    image_dir = "images/{split_dir}"
    label_dir = "annotations/{split_dir}"
    image_suffix = ".jpg"
    label_suffix = ".png"
    split_dirs = {"train": "training", "val": "validation"}
    splits = ("train", "val")
    expected_counts = {"train": 20210, "val": 2000}
    num_classes = 150
    raw_values = 151
    reduce_zero_label = True
    download_hint = ("Download ADEChallengeData2016.zip (sceneparsing.csail.mit.edu) and extract it so that "
                     "ade/ADEChallengeData2016/images/validation exists in the data folder.")

    @classmethod
    def canonical_split(cls, split: str) -> str:
        return super().canonical_split({"training": "train", "validation": "val"}.get(split, split))
