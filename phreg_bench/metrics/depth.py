"""Monocular depth metrics, computed as the DINOv2 / DVT linear-depth evaluation computes them.

Per image: keep ground-truth pixels with ``min_depth < gt < max_depth`` inside the Eigen crop, compute
every metric over those pixels, then average each metric over images (NaN-aware: an image with no valid
pixel is left out). Sources: ``Jiawei-Yang/Denoising-ViT:evaluation/depth/datasets/nyu.py`` (``eval_mask``,
``pre_eval``) and ``evaluation/depth/core/evaluation/metrics.py`` (``calculate``, ``pre_eval_to_metrics``),
the Monocular-Depth-Estimation-Toolbox code that DINOv2 and PH-Reg evaluate with.

Units: RMSE and RMSE_log in metres / log-metres; AbsRel, SqRel and log10 as fractions; ``delta1..3`` in
percent (the paper's Table 2 prints δ1 as a percentage); SILog ×100 as the reference code does.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from phreg_core.distributed import DistEnv
from phreg_core.errors import ConfigError

METRIC_NAMES = ("RMSE", "AbsRel", "SqRel", "RMSE_log", "log10", "delta1", "delta2", "delta3", "SILog")
LOWER_IS_BETTER = {"RMSE", "AbsRel", "SqRel", "RMSE_log", "log10", "SILog"}

# NYUv2 depth range [reference nyu.py: min_depth=1e-3, max_depth=10]
MIN_DEPTH = 1e-3
MAX_DEPTH = 10.0
# Eigen crop on 480x640 ground truth: eval_mask[45:471, 41:601] = 1 [reference nyu.py eval_mask]
EIGEN_CROP = (45, 471, 41, 601)
NYU_SHAPE = (480, 640)


def scaled_box(box: tuple[int, int, int, int], shape: tuple[int, int],
               reference: tuple[int, int] = NYU_SHAPE) -> tuple[int, int, int, int]:
    """A (top, bottom, left, right) box defined on 480x640 NYU frames, scaled to ``shape``.

    On real NYU frames (480x640) this is the box itself; other sizes (generated fixtures) scale it
    proportionally so the same code path runs on small images.
    """
    if tuple(shape) == tuple(reference):
        return box
    sy, sx = shape[0] / reference[0], shape[1] / reference[1]
    top, bottom, left, right = box
    return round(top * sy), round(bottom * sy), round(left * sx), round(right * sx)


def eval_mask(gt: np.ndarray, *, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH,
              eigen_crop: bool = True) -> np.ndarray:
    """Valid pixels: depth strictly inside (min_depth, max_depth), inside the Eigen crop."""
    valid = (gt > min_depth) & (gt < max_depth)
    if eigen_crop:
        top, bottom, left, right = scaled_box(EIGEN_CROP, gt.shape)
        crop = np.zeros_like(valid)
        crop[top:bottom, left:right] = True
        valid &= crop
    return valid


def image_metrics(pred: np.ndarray, gt: np.ndarray, *, min_depth: float = MIN_DEPTH,
                  max_depth: float = MAX_DEPTH, eigen_crop: bool = True) -> dict[str, float]:
    """All metrics for one ``[H, W]`` prediction against its ground truth (NaN when nothing is valid)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    mask = eval_mask(gt, min_depth=min_depth, max_depth=max_depth, eigen_crop=eigen_crop)
    g = gt[mask].astype(np.float64)
    p = pred[mask].astype(np.float64)
    if g.size == 0:
        return dict.fromkeys(METRIC_NAMES, float("nan"))
    thresh = np.maximum(g / p, p / g)
    err = np.log(p) - np.log(g)
    silog_sq = np.mean(err**2) - np.mean(err) ** 2
    silog = np.sqrt(silog_sq) * 100 if silog_sq >= 0 else 0.0  # reference: NaN (negative rounding) -> 0
    return {
        "RMSE": float(np.sqrt(np.mean((g - p) ** 2))),
        "AbsRel": float(np.mean(np.abs(g - p) / g)),
        "SqRel": float(np.mean((g - p) ** 2 / g)),
        "RMSE_log": float(np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2))),
        "log10": float(np.mean(np.abs(np.log10(g) - np.log10(p)))),
        "delta1": float(np.mean(thresh < 1.25) * 100),
        "delta2": float(np.mean(thresh < 1.25**2) * 100),
        "delta3": float(np.mean(thresh < 1.25**3) * 100),
        "SILog": float(silog),
    }


def average(per_image: Iterable[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over images, skipping NaN (``np.nanmean`` as the reference does)."""
    rows = list(per_image)
    if not rows:
        raise ConfigError("no images to average")
    out = {}
    for name in METRIC_NAMES:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        if np.isnan(values).all():
            raise ConfigError(f"no image has a valid ground-truth pixel; cannot compute {name}")
        out[name] = float(np.nanmean(values))
    return out


class DepthMeter:
    """Accumulates per-image metrics; :meth:`compute` gives the dataset average."""

    def __init__(self, *, min_depth: float = MIN_DEPTH, max_depth: float = MAX_DEPTH, eigen_crop: bool = True):
        self.options = {"min_depth": min_depth, "max_depth": max_depth, "eigen_crop": eigen_crop}
        self.rows: list[dict[str, float]] = []

    def update(self, pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
        row = image_metrics(pred, gt, **self.options)
        self.rows.append(row)
        return row

    def all_gather(self, env: DistEnv, indices: list[int]) -> None:
        """Replace this rank's per-image rows by every rank's, in global image order (``indices``: the global
        index of each :meth:`update` call here). The average is not a sum of sums (NaN images are left out, a
        mean of means): gathering the per-image values makes it equal the single-process one exactly."""
        if not env.distributed:
            return
        from phreg_bench.metrics.segmentation import gather_in_order

        local = torch.tensor([[row[name] for name in METRIC_NAMES] for row in self.rows], dtype=torch.float64)
        merged = gather_in_order(env, indices, local.reshape(len(self.rows), len(METRIC_NAMES)))
        self.rows = [dict(zip(METRIC_NAMES, (float(v) for v in row), strict=True)) for row in merged.tolist()]

    def compute(self) -> dict[str, float]:
        return average(self.rows)
