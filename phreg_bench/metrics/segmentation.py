"""Segmentation metrics with mmseg ``IoUMetric`` conventions, and the paper's Pearson metric.

mmseg (``mmseg/evaluation/metrics/iou_metric.py``): pixels whose label is the ignore index are dropped;
over the whole dataset, per class, IoU = intersect / union and Acc = intersect / label area, so a class
absent from both prediction and truth has IoU NaN (0/0) and a class absent from the truth has Acc NaN;
``mIoU`` / ``mAcc`` are ``nanmean`` (NaN classes excluded), ``aAcc`` = all intersect / all labelled pixels.
Values are in percent, computed in mmseg's order (``IoUMetric.compute_metrics``: ``np.nanmean(value) * 100``,
so ``aAcc`` is ``(intersect / labelled) * 100``); mmseg additionally rounds them to 2 decimals for display —
here they are kept unrounded. The confusion matrix is one ``torch.bincount`` per image on the prediction's
device (on CUDA an ``index_add_``: CUDA's ``bincount`` syncs with the host).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from phreg_core.distributed import DistEnv, all_gather_rows, all_sum_
from phreg_core.errors import ConfigError


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
        "aAcc": float(intersect.sum()) / total * 100 if total > 0 else math.nan,
        "IoU": (iou * 100).tolist(),
        "Acc": (acc * 100).tolist(),
    }


def _nanmean_percent(values: np.ndarray) -> float:
    """``np.nanmean(values) * 100`` as mmseg computes it; NaN (without a warning) when every value is NaN."""
    return float(np.nanmean(values)) * 100 if not np.isnan(values).all() else math.nan


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

    def all_reduce(self, env: DistEnv) -> None:
        """Sum the int64 confusion matrix (and the invalid-pixel count) over ranks: exact, so every rank then
        holds what one process would have counted over all images."""
        all_sum_(env, self.confusion)
        all_sum_(env, self.invalid)

    def confusion_matrix(self) -> Tensor:
        """``[K, K]`` int64 counts, ``[t, p]``: pixels of true class ``t`` predicted as ``p``.

        Raises :class:`ValueError` if a labelled pixel had a label or prediction outside ``0..K-1``.
        """
        if int(self.invalid):
            raise ConfigError(f"{int(self.invalid)} labelled pixels had a label or prediction outside "
                             f"0..{self.num_classes - 1} (and not the ignore index {self.ignore_index})")
        return self.confusion[:-1].view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, object]:
        return metrics_from_confusion(self.confusion_matrix())


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


def gather_in_order(env: DistEnv, indices: list[int], values: Tensor) -> Tensor:
    """Every rank's per-image ``values`` ``[n, *shape]`` (float64), ordered by the global image ``indices``.

    A mean taken afterwards adds the same numbers in the same order as one process: bit-identical.
    """
    if len(indices) != values.shape[0]:
        raise ValueError(f"{len(indices)} image indices for {values.shape[0]} per-image values")
    width = math.prod(values.shape[1:])
    rows = torch.cat([torch.as_tensor(indices, dtype=torch.float64).reshape(-1, 1),
                      values.double().cpu().reshape(len(indices), width)], dim=1)
    rows = all_gather_rows(env, rows).cpu()
    rows = rows[torch.argsort(rows[:, 0], stable=True)]
    return rows[:, 1:].reshape(-1, *values.shape[1:])


class PearsonMetric:
    """Averages the per-image Pearson value over the images that have one (no GPU sync per image).

    Not a sum: under ``torchrun`` :meth:`all_gather` collects every rank's per-image values (the sufficient
    statistics) in image order, so the mean equals the single-process one exactly.
    """

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index
        self.values: list[Tensor] = []

    def update(self, scores: Tensor, target: Tensor) -> None:
        if scores.shape[0] >= 2:
            self.values.append(pearson_tensor(scores, target.to(scores.device), self.ignore_index))

    def all_gather(self, env: DistEnv, indices: list[int]) -> None:
        """Replace this rank's values by all ranks' values in global image order (``indices``: the global index
        of each :meth:`update` call of this rank, in call order)."""
        if not env.distributed:
            return
        local = torch.stack(self.values).double().cpu() if self.values else torch.zeros(0, dtype=torch.float64)
        if self.values and len(indices) != len(self.values):
            raise ValueError(f"{len(indices)} image indices for {len(self.values)} Pearson values")
        merged = gather_in_order(env, indices if self.values else [], local)
        self.values = list(merged.unbind(0))

    def compute(self) -> float | None:
        if not self.values:
            return None
        values = torch.stack(self.values).cpu().numpy()
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else None
