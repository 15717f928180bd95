"""The dataset registry ``DATASETS`` and its built-in readers (declared lazily; each target is a class
``Reader(root, split, limit)``; the segmentation readers and the NYU depth reader share no base class, so
the registry checks no type)."""

from __future__ import annotations

from phreg_bench.registry import Registry

DATASETS: Registry[type] = Registry("dataset")

for _name, _target, _aliases, _summary in (
    ("voc21", "pascal:VOC21", ("voc",), "PASCAL VOC 2012, background + 20 classes"),
    ("voc20", "pascal:VOC20", (), "PASCAL VOC 2012, 20 classes (background ignored)"),
    ("context60", "pascal:Context60", ("pc60",), "PASCAL Context, background + 59 classes"),
    ("context59", "pascal:Context59", ("pc59",), "PASCAL Context, 59 classes (background ignored)"),
    ("coco_object", "coco:COCOObject", (), "COCO-Object: background + 80 things (from COCO-Stuff164k)"),
    ("coco_stuff164k", "coco:COCOStuff", ("coco_stuff",), "COCO-Stuff164k, 171 classes"),
    ("cityscapes", "cityscapes:Cityscapes", ("city",), "Cityscapes gtFine, 19 train ids"),
    ("ade20k", "ade:ADE20K", ("ade",), "ADE20K SceneParsing, 150 classes"),
    ("nyuv2", "nyu:NYUv2Depth", ("nyu",), "NYU Depth v2 (labelled .mat or the BTS sync layout)"),
):
    DATASETS.add(_name, f"phreg_bench.datasets.{_target}", aliases=_aliases, summary=_summary)
