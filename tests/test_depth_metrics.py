"""Depth metrics against a NumPy reference on hand-made arrays: crop, range masking, per-image averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from phreg_bench.metrics.depth import METRIC_NAMES, DepthMeter, average, eval_mask, image_metrics


def reference(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The formulas written out on already-masked 1-D arrays (DVT/toolbox ``calculate``)."""
    ratio = np.maximum(gt / pred, pred / gt)
    log_err = np.log(pred) - np.log(gt)
    return {
        "RMSE": math.sqrt(((gt - pred) ** 2).mean()),
        "AbsRel": (np.abs(gt - pred) / gt).mean(),
        "SqRel": (((gt - pred) ** 2) / gt).mean(),
        "RMSE_log": math.sqrt(((np.log(gt) - np.log(pred)) ** 2).mean()),
        "log10": np.abs(np.log10(gt) - np.log10(pred)).mean(),
        "delta1": 100 * (ratio < 1.25).mean(),
        "delta2": 100 * (ratio < 1.25**2).mean(),
        "delta3": 100 * (ratio < 1.25**3).mean(),
        "SILog": 100 * math.sqrt((log_err**2).mean() - log_err.mean() ** 2),
    }


def test_metrics_match_reference_on_valid_pixels_only():
    gt = np.array([[1.0, 2.0, 4.0], [0.0, 10.0, 12.0], [0.001, 3.0, 5.0]], dtype=np.float32)
    pred = np.array([[1.2, 1.5, 4.0], [7.0, 9.0, 1.0], [2.0, 3.3, 6.5]], dtype=np.float32)
    # valid: 1e-3 < gt < 10 (strict on both ends): 0, 10, 12 and 0.001 are out
    keep = np.array([[1, 1, 1], [0, 0, 0], [0, 1, 1]], dtype=bool)
    got = image_metrics(pred, gt, eigen_crop=False)
    want = reference(pred[keep].astype(np.float64), gt[keep].astype(np.float64))
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-9, abs=1e-12), name


def test_eigen_crop_on_a_480x640_frame():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 9.5, size=(480, 640)).astype(np.float32)
    pred = gt * rng.uniform(0.8, 1.2, size=gt.shape).astype(np.float32)
    mask = eval_mask(gt)
    assert mask[45:471, 41:601].all() and mask.sum() == (471 - 45) * (601 - 41)  # the Eigen crop box
    outside = pred.copy()
    outside[:45] = 1000.0  # wild predictions outside the crop change nothing
    outside[:, 601:] = 1e-3
    assert image_metrics(outside, gt) == image_metrics(pred, gt)
    want = reference(pred[45:471, 41:601].astype(np.float64), gt[45:471, 41:601].astype(np.float64))
    got = image_metrics(pred, gt)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-9), name


def test_per_image_averaging_is_not_pixel_pooling():
    gt_a = np.full((4, 4), 2.0)
    pred_a = np.full((4, 4), 2.0)  # perfect
    gt_b = np.zeros((4, 4))
    gt_b[0, 0] = 4.0  # a single valid pixel
    pred_b = np.full((4, 4), 2.0)
    meter = DepthMeter(eigen_crop=False)
    meter.update(pred_a, gt_a)
    meter.update(pred_b, gt_b)
    out = meter.compute()
    assert out["RMSE"] == pytest.approx((0.0 + 2.0) / 2)  # pooled over 17 pixels it would be 2/sqrt(17)
    assert out["AbsRel"] == pytest.approx((0.0 + 0.5) / 2)
    assert out["delta1"] == pytest.approx((100.0 + 0.0) / 2)


def test_image_without_valid_pixels_is_left_out_of_the_mean():
    empty = image_metrics(np.ones((3, 3)), np.zeros((3, 3)), eigen_crop=False)
    assert all(math.isnan(v) for v in empty.values())
    full = image_metrics(np.full((3, 3), 2.0), np.full((3, 3), 4.0), eigen_crop=False)
    assert average([empty, full]) == pytest.approx(full)
    with pytest.raises(ValueError, match="no image"):
        average([empty])


def test_silog_rounding_below_zero_is_zero_and_shapes_must_match():
    gt = np.full((2, 2), 3.0)
    assert image_metrics(gt * 1.1, gt, eigen_crop=False)["SILog"] == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        image_metrics(np.ones((2, 3)), np.ones((3, 2)), eigen_crop=False)
