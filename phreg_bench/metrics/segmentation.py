"""Segmentation metrics with mmseg ``IoUMetric`` conventions, and the paper's Pearson metric.

mmseg (``mmseg/evaluation/metrics/iou_metric.py``): pixels whose label is the ignore index are dropped;
over the whole dataset, per class, IoU = intersect / union and Acc = intersect / label area, so a class
absent from both prediction and truth has IoU NaN (0/0) and a class absent from the truth has Acc NaN;
``mIoU`` / ``mAcc`` are ``nanmean`` (NaN classes excluded), ``aAcc`` = all intersect / all labelled pixels.
Values are in percent; mmseg additionally rounds them to 2 decimals for display — here they are kept
unrounded. The confusion matrix is one ``torch.bincount`` per image on the prediction's device (on CUDA an
``index_add_``: CUDA's ``bincount`` syncs with the host). torchmetrics' ``MulticlassConfusionMatrix``
computes the same, but importing torchmetrics adds seconds to every command.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def count_values(values: Tensor, size: int) -> Tensor:
    """``torch.bincount(values, minlength=size)`` for values in ``[0, size)``, without a GPU host sync.

    (CUDA's ``bincount`` reads the maximum back to size its output; ``index_add_`` into a fixed-size
    tensor does not.)
    """
    values = values.flatten().long()
    if values.device.type == "cpu":
        return torch.bincount(values, minlength=size)
    counts = torch.zeros(size, dtype=torch.int64, device=values.device)
    return counts.index_add_(0, values, torch.ones_like(values))


def metrics_from_confusion(confusion: Tensor) -> dict[str, object]:
    """mIoU / mAcc / aAcc (percent) and per-class IoU / Acc (``nan`` where mmseg has NaN).

    ``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p``.
    """
    confusion = confusion.double().cpu()
    intersect = confusion.diag()
    area_label = confusion.sum(1)
    area_pred = confusion.sum(0)
    union = area_pred + area_label - intersect
    iou = (intersect / union).numpy()  # 0/0 -> nan (class absent from prediction and truth)
    acc = (intersect / area_label).numpy()  # 0/0 -> nan (class absent from the truth)
    total = float(area_label.sum())
    return {
        "mIoU": _nanmean_percent(iou),
        "mAcc": _nanmean_percent(acc),
        "aAcc": 100.0 * float(intersect.sum()) / total if total > 0 else math.nan,
        "IoU": (100.0 * iou).tolist(),
        "Acc": (100.0 * acc).tolist(),
    }


def _nanmean_percent(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return 100.0 * float(finite.mean()) if finite.size else math.nan


class SegmentationMetric:
    """Accumulates the confusion matrix over images; :meth:`compute` gives mmseg-style numbers.

    Updates never synchronise with the GPU: out-of-range labels or predictions are counted on the device
    and reported as an error by :meth:`compute`.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)
        self.invalid = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` and ``target`` ``[H, W]`` integer maps; ``target == ignore_index`` is skipped."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(target.shape)} differ in size")
        device, classes = self.confusion.device, self.num_classes
        target, pred = target.to(device).long().flatten(), pred.to(device).long().flatten()
        labelled = target != self.ignore_index
        bad = labelled & ((target < 0) | (target >= classes) | (pred < 0) | (pred >= classes))
        self.invalid += bad.sum()
        dump = classes * classes  # ignored and invalid pixels land in this extra bin
        index = torch.where(labelled & ~bad, target * classes + pred, dump)
        self.confusion += count_values(index, dump + 1)

    def compute(self) -> dict[str, object]:
        if int(self.invalid):
            raise ValueError(f"{int(self.invalid)} labelled pixels had a label or prediction outside "
                             f"0..{self.num_classes - 1} (and not the ignore index {self.ignore_index})")
        return metrics_from_confusion(self.confusion[:-1].view(self.num_classes, self.num_classes))


def pearson_tensor(scores: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """:func:`pixel_pearson` as a 0-d tensor on the scores' device (NaN when undefined), without a sync."""
    num_classes = scores.shape[0]
    scores = scores.float()
    mean = scores.mean(0)  # computed on the full map, masked after
    # population std, two-pass: sqrt(mean((s - mean)^2)); 8x faster on the CPU than torch.std's reduction
    # over dim 0 and equal to it to float32 rounding (relative 1e-6)
    std = (scores - mean).square_().mean(0).sqrt_()
    picked = scores.gather(0, target.clamp(0, num_classes - 1).long()[None])[0]
    usable = (target != ignore_index) & (std > 0)
    r = (picked - mean) / (std * math.sqrt(max(num_classes - 1, 1)))
    count = usable.sum()
    total = torch.where(usable, r, torch.zeros_like(r)).double().sum()
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def pixel_pearson(scores: Tensor, target: Tensor, ignore_index: int = 255) -> float | None:
    """Mean over labelled pixels of the Pearson correlation between a pixel's class scores ``[C]`` and the
    one-hot ground truth; ``None`` if the image has no usable pixel.

    Our reading of the paper's Table S.4 ("Pearson correlation coefficient for the zero-shot query against
    the one-hot ground truth labels … averaged within each image, then averaged across images"; no code was
    released): raw cosine scores (no softmax, so no threshold or presence knowledge is needed), one
    correlation per pixel over the classes. For a one-hot ``y`` with true class ``g`` this is
    ``(s_g − mean(s)) / (std(s) · sqrt(C − 1))`` with population std. Pixels with constant scores are skipped.
    """
    if scores.shape[0] < 2:
        return None
    value = float(pearson_tensor(scores, target.to(scores.device), ignore_index))
    return None if math.isnan(value) else value


class PearsonMetric:
    """Averages the per-image Pearson value over the images that have one (no GPU sync per image)."""

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index
        self.values: list[Tensor] = []

    def update(self, scores: Tensor, target: Tensor) -> None:
        if scores.shape[0] >= 2:
            self.values.append(pearson_tensor(scores, target.to(scores.device), self.ignore_index))

    def compute(self) -> float | None:
        if not self.values:
            return None
        values = torch.stack(self.values).cpu().numpy()
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else None
