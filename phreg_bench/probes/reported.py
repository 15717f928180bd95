"""The paper's Table 2 (linear probes) as ``reported`` result records.

Numbers verbatim from arXiv:2505.21501 (camera-ready), Table 2, as transcribed in the reference notes §3:
VOC21 and ADE20K mIoU / mAcc (%), NYUv2 RMSE (m), AbsRel and delta1 (%). The files are written with
``python -m phreg_bench.probes.reported [FOLDER]`` (default: the shipped package data,
``phreg_bench/reported_results``).

Backbone names are this project's catalogue names; "+ DVT" rows are recorded as methods ``dvt``,
``naclip+dvt`` and ``maskclip+dvt`` (DVT is not implemented here; its numbers are quoted only).
"""

from __future__ import annotations

from pathlib import Path

from phreg_bench.results.records import Citation, Metrics, ResultRecord, TaskRef
from phreg_bench.results.store import ResultStore

CITATION = Citation(source="arXiv:2505.21501", table="Table 2",
                    title="Vision Transformers with Self-Distilled Registers (NeurIPS 2025 camera-ready)")
PROTOCOL = "paper"

# (backbone, method): (VOC mIoU, VOC mAcc, ADE mIoU, ADE mAcc, RMSE, AbsRel, delta1)
TABLE2: dict[tuple[str, str], tuple[float, ...]] = {
    ("openai-clip-vit-b16", "raw"): (73.88, 83.37, 35.78, 47.3, 0.6843, 0.2115, 64.93),
    ("openai-clip-vit-b16", "dvt"): (74.74, 84.33, 36.39, 48.14, 0.6800, 0.2089, 65.07),
    ("openai-clip-vit-b16", "naclip"): (74.01, 83.16, 37.06, 48.33, 0.6852, 0.2082, 64.52),
    ("openai-clip-vit-b16", "naclip+dvt"): (74.47, 82.98, 36.91, 48.56, 0.6845, 0.2122, 65.11),
    ("openai-clip-vit-b16", "maskclip"): (70.28, 79.06, 34.43, 44.74, 0.6645, 0.2030, 67.71),
    ("openai-clip-vit-b16", "maskclip+dvt"): (71.38, 80.49, 34.43, 44.86, 0.6792, 0.2091, 64.96),
    ("openai-clip-vit-b16", "phreg"): (75.32, 84.96, 38.07, 49.58, 0.6746, 0.1995, 68.17),
    ("openclip-vit-b16-laion2b", "raw"): (71.31, 80.64, 37.68, 49.8, 0.6853, 0.2113, 64.86),
    ("openclip-vit-b16-laion2b", "dvt"): (72.58, 83.42, 38.30, 50.91, 0.6811, 0.2159, 64.73),
    ("openclip-vit-b16-laion2b", "phreg"): (73.25, 83.99, 39.32, 51.24, 0.6784, 0.2019, 65.32),
    ("dfn-clip-vit-b16", "raw"): (71.98, 82.07, 36.81, 47.83, 0.6860, 0.2118, 64.50),
    ("dfn-clip-vit-b16", "dvt"): (73.09, 83.52, 37.73, 49.39, 0.6852, 0.2092, 64.65),
    ("dfn-clip-vit-b16", "phreg"): (72.97, 82.48, 39.15, 50.61, 0.6768, 0.2052, 65.26),
    ("dinov2-vit-b14", "raw"): (84.13, 92.00, 47.82, 60.50, 0.4566, 0.1391, 82.92),
    ("dinov2-vit-b14", "dvt"): (85.43, 93.37, 48.86, 61.61, 0.4329, 0.1289, 85.23),
    ("dinov2-vit-b14", "phreg"): (84.85, 92.46, 48.66, 61.57, 0.4306, 0.1216, 86.35),
}

TASKS = {  # task name -> (family, version, main metric, higher is better)
    "linseg/voc21": ("linseg", "1", "mIoU", True),
    "linseg/ade20k": ("linseg", "1", "mIoU", True),
    "depth/nyu": ("depth", "1", "RMSE", False),
}


def records() -> list[ResultRecord]:
    out = []
    for (backbone, method), row in TABLE2.items():
        voc_miou, voc_macc, ade_miou, ade_macc, rmse, absrel, delta1 = row
        values = {"linseg/voc21": {"mIoU": voc_miou, "mAcc": voc_macc},
                  "linseg/ade20k": {"mIoU": ade_miou, "mAcc": ade_macc},
                  "depth/nyu": {"RMSE": rmse, "AbsRel": absrel, "delta1": delta1}}
        for task, (family, version, main, higher) in TASKS.items():
            out.append(ResultRecord.reported(
                task=TaskRef(task, family, version, None), backbone=backbone, method=method, protocol=PROTOCOL,
                metrics=Metrics(main, higher, values[task]), citation=CITATION))
    return out


def write(folder: Path) -> list[Path]:
    store = ResultStore(Path(folder))
    return [store.write(record) for record in records()]


if __name__ == "__main__":
    from phreg_bench.results.shipped import regenerate

    regenerate(write)
