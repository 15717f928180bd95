"""PASCAL VOC 2012 (21 / 20 classes) and PASCAL Context (60 / 59 classes), mmseg layouts.

Settings follow the mmseg / NACLIP dataset classes (``sinahmr/NACLIP:custom_datasets.py``):
VOC21 = ``PascalVOCDataset`` (background is class 0), VOC20 = ``PascalVOC20Dataset`` (``reduce_zero_label``:
background becomes ignore), PC60 = ``PascalContext60Dataset`` (``reduce_zero_label=False``), PC59 =
``PascalContext59Dataset`` (``reduce_zero_label=True``).
"""

from __future__ import annotations

from phreg_bench.datasets.layouts import ListedDataset

VOC_HINT = ("Download VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012) and extract it in "
            "the data folder so that VOCdevkit/VOC2012/JPEGImages exists; for train_aug add SBD with mmseg's "
            "tools/dataset_converters/voc_aug.py (SegmentationClassAug + ImageSets/Segmentation/aug.txt).")
CONTEXT_HINT = ("Download VOCtrainval_03-May-2010.tar and trainval_merged.json, extract them so that "
                "VOCdevkit/VOC2010/JPEGImages exists, then run mmseg's tools/dataset_converters/pascal_context.py "
                "to write SegmentationClassContext/ and ImageSets/SegmentationContext/{train,val}.txt.")


class VOC21(ListedDataset):
    name = "voc21"
    folder = "VOCdevkit/VOC2012"
    num_classes = 21
    raw_values = 21  # 0 = background, 1..20 objects, 255 = boundary
    has_background = True
    splits = ("train", "val", "trainval", "train_aug")
    # mmseg dataset-prepare guide: 1464 train / 1449 val; train_aug = SBD ∪ VOC train − VOC val (10582).
    expected_counts = {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582}
    split_files = {
        "train": (("ImageSets/Segmentation/train.txt",), "SegmentationClass"),
        "val": (("ImageSets/Segmentation/val.txt",), "SegmentationClass"),
        "trainval": (("ImageSets/Segmentation/trainval.txt",), "SegmentationClass"),
        "train_aug": (("ImageSets/Segmentation/train_aug.txt", "ImageSets/Segmentation/aug.txt"),
                      "SegmentationClassAug"),
    }
    download_hint = VOC_HINT


class VOC20(VOC21):
    name = "voc20"
    num_classes = 20
    has_background = False
    reduce_zero_label = True  # NACLIP PascalVOC20Dataset(reduce_zero_label=True)


class Context60(ListedDataset):
    name = "context60"
    folder = "VOCdevkit/VOC2010"
    num_classes = 60
    raw_values = 60  # mmseg's pascal_context.py converter: 0 = background, 1..59 classes
    has_background = True
    splits = ("train", "val")
    expected_counts = {"train": 4996, "val": 5105}
    split_files = {
        "train": (("ImageSets/SegmentationContext/train.txt",), "SegmentationClassContext"),
        "val": (("ImageSets/SegmentationContext/val.txt",), "SegmentationClassContext"),
    }
    download_hint = CONTEXT_HINT


class Context59(Context60):
    name = "context59"
    num_classes = 59
    has_background = False
    reduce_zero_label = True  # mmseg PascalContextDataset59(reduce_zero_label=True)
