"""mmseg IoUMetric conventions on hand-computed cases, and the Pearson metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from phreg_bench.datasets.base import reduce_zero_label
from phreg_bench.metrics.segmentation import PearsonMetric, SegmentationMetric, metrics_from_confusion, pixel_pearson
from phreg_bench.tasks.ovseg.harness import HarnessSettings, classify
from phreg_bench.tasks.ovseg.text import ClassQueries


def test_hand_computed_iou_with_ignore_and_absent_class():
    # 4 classes; class 3 appears nowhere (NaN IoU and Acc, excluded from the means);
    # class 2 is predicted but never true (IoU 0 counted, Acc NaN); 255 pixels are dropped.
    target = torch.tensor([[0, 0, 1, 1], [255, 255, 1, 0]])
    pred = torch.tensor([[0, 1, 1, 2], [3, 3, 1, 0]])  # the 3s sit on ignored pixels
    metric = SegmentationMetric(4)
    metric.update(pred, target)
    out = metric.compute()
    # class 0: true {p0,p1,p7}, pred {p0,p7} -> I=2, U=3; class 1: true {p2,p3,p6}, pred {p1,p2,p6} -> I=2, U=4
    # class 2: true {}, pred {p3} -> I=0, U=1
    assert out["IoU"][0] == pytest.approx(100 * 2 / 3)
    assert out["IoU"][1] == pytest.approx(100 * 2 / 4)
    assert out["IoU"][2] == 0.0
    assert math.isnan(out["IoU"][3])
    assert out["mIoU"] == pytest.approx(100 * (2 / 3 + 2 / 4 + 0) / 3)
    assert out["Acc"][0] == pytest.approx(100 * 2 / 3) and out["Acc"][1] == pytest.approx(100 * 2 / 3)
    assert math.isnan(out["Acc"][2]) and math.isnan(out["Acc"][3])
    assert out["mAcc"] == pytest.approx(100 * 2 / 3)
    assert out["aAcc"] == pytest.approx(100 * 4 / 6)


def test_accumulates_over_images_not_per_image_means():
    metric = SegmentationMetric(2)
    metric.update(torch.tensor([[0, 0]]), torch.tensor([[0, 0]]))  # image 1: perfect on class 0
    metric.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[1, 1, 1, 1]]))  # image 2
    out = metric.compute()
    # dataset totals: class 0 I=2 U=3; class 1 I=3 U=4 (a per-image mean would give different numbers)
    assert out["mIoU"] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2)


def test_label_outside_range_is_an_error():
    metric = SegmentationMetric(3)
    metric.update(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 7], [255, 1]]))
    with pytest.raises(ValueError, match="1 labelled pixels had a label or prediction outside 0..2"):
        metric.compute()


def test_metrics_from_confusion_matches_manual_formula():
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    out = metrics_from_confusion(confusion)
    assert out["IoU"][:2] == pytest.approx([100 * 5 / 8, 100 * 3 / 6])
    assert math.isnan(out["IoU"][2])


def test_reduce_zero_label_as_mmseg():
    raw = np.array([[0, 1, 2], [150, 255, 0]])
    assert reduce_zero_label(raw).tolist() == [[255, 0, 1], [149, 255, 255]]


def _queries(query_class: list[int]) -> ClassQueries:
    classes = torch.tensor(query_class)
    return ClassQueries(torch.zeros(len(query_class), 2), classes, [str(i) for i in query_class],
                        int(classes.max()) + 1)


def test_background_threshold_synonym_max_and_argmax():
    # Queries 0 and 1 are synonyms of class 0 (background), query 2 is class 1. logits[query, 0, pixel]:
    # p0 favours query 2 strongly; p1 favours query 2 slightly (class probs 0.30 vs 0.40: argmax 1, but the
    # max 0.40 < prob_thd 0.5 -> class 0); p2 favours query 1, a background synonym (max over synonyms).
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.05, 0.0]]).view(3, 1, 3)
    probs = torch.softmax(10 * logits.view(3, 3), 0)
    assert 0.35 < probs[2, 1] < 0.5 and probs[:2, 1].max() < probs[2, 1]
    queries = _queries([0, 0, 1])
    without = classify(logits, queries, HarnessSettings(resize=0, crop=0, stride=1, logit_scale=10.0))
    assert without.view(-1).tolist() == [1, 1, 0]
    with_threshold = classify(logits, queries, HarnessSettings(0, 0, 1, logit_scale=10.0, prob_thd=0.5))
    assert with_threshold.view(-1).tolist() == [1, 0, 0]


def test_sclip_area_threshold_drops_small_classes():
    # 3 classes, 10 pixels: 6 predicted class 1, 1 predicted class 2, 3 predicted class 0.
    logits = torch.full((3, 1, 10), -5.0)
    logits[1, 0, :6] = 5.0
    logits[2, 0, 6] = 5.0
    logits[0, 0, 7:] = 5.0
    settings = HarnessSettings(resize=0, crop=0, stride=1, logit_scale=1.0, area_thd=0.2)
    pred = classify(logits, _queries([0, 1, 2]), settings)
    # class 2 covers 1 of the 7 non-background pixels (< 0.2): its probabilities are zeroed
    assert pred.view(-1).tolist()[6] != 2
    assert pred.view(-1).tolist()[:6] == [1] * 6


def test_pixel_pearson_matches_numpy_corrcoef():
    torch.manual_seed(0)
    scores = torch.randn(5, 3, 4)
    target = torch.randint(0, 5, (3, 4))
    target[0, 0] = 255
    expected = []
    for y in range(3):
        for x in range(4):
            if target[y, x] == 255:
                continue
            onehot = np.eye(5)[int(target[y, x])]
            expected.append(np.corrcoef(scores[:, y, x].numpy(), onehot)[0, 1])
    assert pixel_pearson(scores, target) == pytest.approx(float(np.mean(expected)), abs=1e-6)
    metric = PearsonMetric()
    metric.update(scores, target)
    metric.update(scores, torch.full((3, 4), 255))  # no labelled pixel: not counted
    assert metric.compute() == pytest.approx(float(np.mean(expected)), abs=1e-6)


def _random_maps(generator: torch.Generator, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true maps ``[2, 17, 23]`` over a random subset of classes, ~10 % ignored pixels."""
    present = int(torch.randint(1, num_classes + 1, (1,), generator=generator))
    target = torch.randint(0, present, (2, 17, 23), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.1] = 255
    return torch.randint(0, present, (2, 17, 23), generator=generator), target


def _mmseg_metrics(confusion: torch.Tensor) -> dict[str, object]:
    # transcribed from open-mmlab/mmsegmentation mmseg/evaluation/metrics/iou_metric.py,
    # IoUMetric.total_area_to_metrics (metrics=['mIoU']) and compute_metrics (summary without np.round)
    total_area_intersect = confusion.diag()
    total_area_label = confusion.sum(1)
    total_area_pred_label = confusion.sum(0)
    total_area_union = total_area_pred_label + total_area_label - total_area_intersect
    all_acc = total_area_intersect.sum() / total_area_label.sum()
    iou = total_area_intersect / total_area_union
    acc = total_area_intersect / total_area_label
    ret_metrics = {metric: value.numpy() for metric, value in {"aAcc": all_acc, "IoU": iou, "Acc": acc}.items()}
    summary = {metric: np.nanmean(value) * 100 for metric, value in ret_metrics.items()}
    return {"aAcc": summary["aAcc"], "mIoU": summary["IoU"], "mAcc": summary["Acc"],
            "IoU": (ret_metrics["IoU"] * 100).tolist(), "Acc": (ret_metrics["Acc"] * 100).tolist()}


def test_metrics_equal_mmseg_to_the_last_bit():
    """Same values in the same operation order as mmseg's IoUMetric (counts held exactly as float64)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        num_classes = int(torch.randint(2, 20, (1,), generator=generator))
        metric = SegmentationMetric(num_classes)
        metric.update(*_random_maps(generator, num_classes))
        ours, theirs = metric.compute(), _mmseg_metrics(metric.confusion_matrix().double())
        for key in ("aAcc", "mIoU", "mAcc"):
            assert float(ours[key]) == float(theirs[key]), key
        np.testing.assert_array_equal(ours["IoU"], theirs["IoU"])
        np.testing.assert_array_equal(ours["Acc"], theirs["Acc"])


def _previous_synthetic_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int):
    # transcribed from phreg-bench 2cfcaf3 phreg_bench/tasks/synthetic.py confusion_matrix and iou_metrics (the
    # built-in task's own mIoU code before it used metrics.segmentation)
    valid = target != 255
    index = target[valid] * num_classes + pred[valid]
    confusion = torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    gt = confusion.sum(1)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    metrics = {
        "mIoU": 100 * float(np.nanmean(iou.numpy())),
        "mAcc": 100 * float(np.nanmean(acc.numpy())),
        "aAcc": 100 * float(tp.sum() / confusion.sum().clamp(min=1)),
    }
    return confusion, metrics, [None if np.isnan(v) else 100 * float(v) for v in iou.tolist()]


def test_built_in_task_numbers_are_unchanged_by_the_shared_metric_code():
    """The synthetic task now counts and scores through metrics.segmentation (as the proof table does); every
    number, absent classes included, is bit-identical to its former own implementation."""
    from phreg_bench.synthetic.family import confusion_matrix, iou_metrics

    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        num_classes = int(torch.randint(2, 20, (1,), generator=generator))
        pred, target = _random_maps(generator, num_classes)
        before_confusion, before, before_per_class = _previous_synthetic_metrics(pred, target, num_classes)
        confusion = confusion_matrix(pred, target, num_classes)
        metrics, per_class = iou_metrics(confusion)
        assert torch.equal(confusion, before_confusion) and confusion.dtype == torch.float64
        assert metrics == before and per_class == before_per_class
