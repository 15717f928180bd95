"""End to end: `--tasks voc,ade,nyu` on generated VOC / ADE20K / NYUv2 layouts with a random-init ViT.

The fixtures have learnable structure (colour-coded classes; depth written into the image brightness), so
the trained probes must beat the best constant predictor by a clear margin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_probe import DEPTH_OVERRIDES, SEG_OVERRIDES, single_thread, write_ade, write_nyu, write_voc  # noqa: F401

from phreg_bench.backbones.builtin import build_tiny_vit
from phreg_bench.datasets.nyu import NYUv2Depth
from phreg_bench.metrics.depth import DepthMeter
from phreg_bench.metrics.segmentation import SegmentationMetric
from phreg_bench.registries import DATASETS, TASK_FAMILIES, TASKS
from phreg_bench.runner import RunRequest, expand_tasks, run
from phreg_bench.tasks.base import RunContext

pytestmark = pytest.mark.usefixtures("single_thread")
OVERRIDES = {**SEG_OVERRIDES, **DEPTH_OVERRIDES, "iters": 60, "train_source": "labeled"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_voc(root, n_train=8, n_val=4)
    write_ade(root, n_train=8, n_val=4)
    write_nyu(root, n_train=16, n_test=6)
    return root


def _run(data_root: Path, tmp_path: Path, tasks, overrides, **request):
    ctx = RunContext(data_root=data_root, cache_dir=tmp_path / "cache", batch_size=8)
    req = RunRequest(backbone="tiny-vit", tasks=tasks, protocol_overrides=overrides, random_init=True,
                     results_dir=tmp_path / "results", **request)
    runs = run(req, ctx, log=lambda message: None)
    assert [r.status for r in runs] == ["done"] * len(runs), [r.error for r in runs]
    return {r.task: json.loads(Path(r.path).read_text()) for r in runs}


def _constant_seg_miou(dataset_name: str, data_root: Path, train_split: str) -> float:
    reader = DATASETS.get(dataset_name)
    counts = np.zeros(reader.num_classes, dtype=np.int64)
    for sample in reader(data_root, split=train_split):
        valid = sample.label[sample.label != 255]
        counts += np.bincount(valid, minlength=reader.num_classes)
    metric = SegmentationMetric(reader.num_classes)
    for sample in reader(data_root, split="val"):
        label = torch.from_numpy(sample.label)
        metric.update(torch.full_like(label, int(counts.argmax())), label)
    return float(metric.compute()["mIoU"])


def _constant_depth_rmse(data_root: Path) -> float:
    train = NYUv2Depth(data_root, "train", source="labeled")
    values = np.concatenate([s.depth[(s.depth > 0) & (s.depth <= 10)] for s in train])
    meter = DepthMeter()
    for sample in NYUv2Depth(data_root, "test", source="labeled"):
        meter.update(np.full_like(sample.depth, np.median(values)), sample.depth)
    return meter.compute()["RMSE"]


def test_short_names_expand_to_the_probe_tasks():
    names = [spec.name for spec in expand_tasks(["voc", "ade", "nyu"], build_tiny_vit())]
    assert names == ["linseg/voc21", "linseg/ade20k", "depth/nyu"]  # no text tower: no ovseg
    assert {TASKS.get(n).short_name for n in names} == {"voc", "ade", "nyu"}


def test_probes_beat_a_constant_predictor(data_root, tmp_path):
    results = _run(data_root, tmp_path, ["voc", "ade", "nyu"], OVERRIDES)
    assert sorted(results) == ["depth/nyu", "linseg/ade20k", "linseg/voc21"]
    for task, train_split in (("linseg/voc21", "train_aug"), ("linseg/ade20k", "train")):
        record = results[task]
        assert record["extra"]["train_features"] == "cached" and record["extra"]["budget"] == "full"
        assert record["protocol"]["settings"]["train_split"] == train_split
        assert record["extra"]["resolved"]["input_size"] == 48
        probe = record["metrics"]["values"]["mIoU"]
        constant = _constant_seg_miou(record["task"]["name"].split("/")[1], data_root, train_split)
        assert probe > constant + 25, (task, probe, constant)
    depth = results["depth/nyu"]
    values = depth["metrics"]["values"]
    assert set(values) == {"RMSE", "AbsRel", "SqRel", "RMSE_log", "log10", "delta1", "delta2", "delta3", "SILog"}
    assert depth["metrics"]["main"] == "RMSE" and depth["metrics"]["higher_is_better"] is False
    assert depth["extra"]["resolved"]["train_source"] == "labeled"
    constant = _constant_depth_rmse(data_root)
    assert values["RMSE"] < 0.6 * constant, (values["RMSE"], constant)

    # a rerun reads every feature from the cache (only depth's keys: a linseg key is refused for depth alone)
    depth_only = {key: value for key, value in OVERRIDES.items() if key not in SEG_OVERRIDES or key == "iters"}
    again = _run(data_root, tmp_path, ["nyu"], depth_only, overwrite="always")["depth/nyu"]
    assert again["extra"]["feature_cache"]["train"]["hit"] and again["extra"]["feature_cache"]["test"]["hit"]
    assert again["metrics"]["values"] == values  # same features, same seed: same numbers


def test_full_mode_runs_the_online_pipeline_and_records_it(data_root, tmp_path):
    results = _run(data_root, tmp_path, ["linseg/voc21", "depth/nyu"],
                   {**OVERRIDES, "iters": 4, "train_features": "full"})
    for record in results.values():
        assert record["extra"]["train_features"] == "full"
        assert record["extra"]["feature_cache"]["train"] is None  # nothing cached for training
        assert record["protocol"]["settings"]["train_features"] == "full"
        assert all(np.isfinite(v) for v in record["metrics"]["values"].values())


def test_quick_budget_is_resolved_and_recorded():
    # quick is a smoke test: 100 iterations on smaller inputs / crops; full keeps the paper's values
    smaller = {"linseg/voc21": ("input_size", 224, "auto"), "linseg/ade20k": ("input_size", 224, "auto"),
               "depth/nyu": ("train_crop", [208, 272], [416, 544])}
    for name, iters in (("linseg/voc21", 100), ("linseg/ade20k", 100), ("depth/nyu", 50)):
        spec = TASKS.get(name)
        family = TASK_FAMILIES.get(spec.family)()
        full = family.resolve_settings(spec, None, RunContext())
        quick = family.resolve_settings(spec, None, RunContext(budget="quick"))
        assert (quick["budget"], quick["iters"]) == ("quick", iters) and full["budget"] == "full"
        assert full["iters"] == {"linseg/voc21": 20000, "linseg/ade20k": 40000, "depth/nyu": 30000}[name]
        key, quick_value, full_value = smaller[name]
        assert (list(quick[key]) if isinstance(quick[key], tuple) else quick[key]) == quick_value
        assert (list(full[key]) if isinstance(full[key], tuple) else full[key]) == full_value
        assert "budgets" not in quick
