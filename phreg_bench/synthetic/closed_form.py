"""Closed-form linear probes on frozen patch features, for the synthetic world's quick checks.

Both probes standardise the features with the training statistics (what the BatchNorm of the paper's
BNHead does) and apply one linear map; they are fitted full-batch and deterministically in seconds on a
CPU, and are sensitive to the same thing as the paper's trained heads — patch features that lost their
local content. They are *not* the paper's protocol (that is ``linseg`` / ``depth``, trained with AdamW
and augmentations); they are what the synthetic proof, the built-in default and the tests use.

* segmentation: multinomial logistic regression on every patch against its class shares (soft labels),
  fitted with L-BFGS; scores upsampled bilinearly, argmax per pixel; mIoU / mAcc as mmseg computes them
  (:mod:`phreg_bench.metrics.segmentation`);
* depth: ridge regression of every patch's mean depth, upsampled bilinearly; RMSE / AbsRel / δ1 per image,
  then averaged (:mod:`phreg_bench.metrics.depth`, no Eigen crop: these are not NYU frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

RIDGE = 1e-3  # ridge strength relative to the mean diagonal of XᵀX (a tiny, scale-free regulariser)
WEIGHT_DECAY = 1e-4  # L2 penalty of the logistic probe (the linseg protocol's AdamW weight decay)
LBFGS_STEPS = 100  # full-batch L-BFGS iterations of the logistic probe (converged on these sizes)


@dataclass
class LinearProbe:
    """``y = ((x − mean) / std) @ weight + bias`` on patch features."""

    mean: Tensor
    std: Tensor
    weight: Tensor  # [C, K]
    bias: Tensor  # [K]

    def __call__(self, feats: Tensor) -> Tensor:
        """Patch grids ``[B, C, h, w]`` → predictions ``[B, K, h, w]``."""
        x = feats.permute(0, 2, 3, 1).double()
        y = ((x - self.mean) / self.std) @ self.weight + self.bias
        return y.permute(0, 3, 1, 2).float()


def fit_linear_probe(feats: Tensor, targets: Tensor, ridge: float = RIDGE) -> LinearProbe:
    """Fit ``targets`` ``[B, K, h, w]`` from ``feats`` ``[B, C, h, w]`` by ridge regression."""
    x = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double()
    y = targets.permute(0, 2, 3, 1).reshape(-1, targets.shape[1]).double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gram = x.T @ x
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=x.dtype)
    solution = torch.linalg.solve(gram, x.T @ y)
    return LinearProbe(mean, std, solution[:-1], solution[-1])


def fit_softmax_probe(feats: Tensor, shares: Tensor, weight_decay: float = WEIGHT_DECAY,
                      steps: int = LBFGS_STEPS) -> LinearProbe:
    """Multinomial logistic regression of class shares ``[B, K, h, w]`` on ``feats`` ``[B, C, h, w]``."""
    x = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).double()
    y = shares.permute(0, 2, 3, 1).reshape(-1, shares.shape[1]).double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(y.shape[1], dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = -(y * torch.log_softmax(x @ weight + bias, dim=1)).sum(1).mean() + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())


def patch_targets_segmentation(labels: Tensor, grid: tuple[int, int], num_classes: int) -> Tensor:
    """Class share of every patch, ``[B, K, h, w]``, from pixel labels ``[B, H, W]``."""
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, grid)


def patch_targets_depth(depth: Tensor, grid: tuple[int, int]) -> Tensor:
    """Mean depth of every patch, ``[B, 1, h, w]``, from pixel depth ``[B, H, W]``."""
    return F.adaptive_avg_pool2d(depth[:, None].float(), grid)


def segmentation_probe(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, val_labels: Tensor,
                       num_classes: int) -> dict[str, float]:
    """Fit on the training patches, score the validation pixels: ``{"mIoU", "mAcc", "aAcc"}`` in percent."""
    from phreg_bench.metrics.segmentation import SegmentationMetric

    probe = fit_softmax_probe(train_feats, patch_targets_segmentation(train_labels, train_feats.shape[-2:],
                                                                      num_classes))
    scores = F.interpolate(probe(val_feats), size=val_labels.shape[-2:], mode="bilinear", align_corners=False)
    metric = SegmentationMetric(num_classes)
    for pred, label in zip(scores.argmax(1), val_labels, strict=True):
        metric.update(pred, label)
    result = metric.compute()
    return {key: float(result[key]) for key in ("mIoU", "mAcc", "aAcc")}


def depth_probe(train_feats: Tensor, train_depth: Tensor, val_feats: Tensor, val_depth: Tensor,
                min_depth: float = 0.1) -> dict[str, float]:
    """Fit on the training patches, score the validation pixels: ``{"RMSE", "AbsRel", "delta1"}``."""
    from phreg_bench.metrics.depth import DepthMeter

    probe = fit_linear_probe(train_feats, patch_targets_depth(train_depth, train_feats.shape[-2:]))
    pred = F.interpolate(probe(val_feats), size=val_depth.shape[-2:], mode="bilinear", align_corners=False)
    pred = pred[:, 0].clamp(min=min_depth)
    meter = DepthMeter(eigen_crop=False)
    for p, g in zip(pred.numpy(), val_depth.numpy(), strict=True):
        meter.update(p.astype(np.float32), g)
    result = meter.compute()
    return {key: float(result[key]) for key in ("RMSE", "AbsRel", "delta1")}
