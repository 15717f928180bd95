"""The built-in synthetic task family: segmentation of generated scenes by a class-prototype probe.

Images come from :mod:`phreg_bench.synthetic.scenes` (deterministic, generated in memory, no download).
The probe is training-free: each class prototype is the mean of L2-normalised patch features over the
train scenes, weighted by how much of each patch the class covers; a validation pixel takes the class of
the most similar prototype (cosine), after bilinear upsampling of the patch-level similarities. Dense
features with artifacts make prototypes noisier, so the probe's mIoU tracks feature quality.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from phreg_bench.methods.base import DenseModel
from phreg_bench.metrics.segmentation import SegmentationMetric, gather_in_order, metrics_from_confusion
from phreg_bench.progress import track
from phreg_bench.protocol_settings import NamedSettings, require
from phreg_bench.synthetic.scenes import CLASS_NAMES, render_batch
from phreg_bench.tasks.base import RunContext, TaskFamily, TaskOutcome, TaskSpec
from phreg_core.distributed import all_sum_, shard


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = 255) -> torch.Tensor:
    """``[K, K]`` float64 pixel counts (true class × predicted class) of predicted and true label maps of one
    shape (``[B, H, W]``), counted by :class:`~phreg_bench.metrics.segmentation.SegmentationMetric`: the
    benchmark's one segmentation-metric code, also behind the proof table. Float64 holds counts exactly up
    to 2**53 pixels, so the matrices of batches add exactly."""
    metric = SegmentationMetric(num_classes, ignore_index)
    metric.update(pred, target)
    return metric.confusion_matrix().double()


def iou_metrics(confusion: torch.Tensor) -> tuple[dict[str, float], list[float | None]]:
    """mIoU / mAcc / aAcc in percent and the per-class IoU (``None`` for a class absent from prediction and
    truth), by :func:`~phreg_bench.metrics.segmentation.metrics_from_confusion`."""
    result = metrics_from_confusion(confusion)
    metrics = {key: float(result[key]) for key in ("mIoU", "mAcc", "aAcc")}
    return metrics, [None if math.isnan(value) else float(value) for value in result["IoU"]]


@dataclass(frozen=True, kw_only=True)
class SyntheticSettings(NamedSettings):
    """The built-in task's protocol (``tasks/synthetic/segmentation.yaml``)."""

    image_size: int  # pixels (square scenes)
    num_train: int  # scenes averaged into the class prototypes
    num_val: int  # scenes evaluated
    scene_seed: int

    def validate(self) -> None:
        for key in ("image_size", "num_train", "num_val"):
            require(key, getattr(self, key) > 0, f"must be > 0, got {getattr(self, key)}")
        require("scene_seed", self.scene_seed >= 0, f"must be >= 0, got {self.scene_seed}")


class SyntheticSegmentation(TaskFamily):
    name = "synthetic"
    settings_class = SyntheticSettings

    def run(self, model: DenseModel, spec: TaskSpec, settings: dict[str, Any], ctx: RunContext) -> TaskOutcome:
        """Class-prototype segmentation of generated scenes with ``model``'s unprojected final patch tokens.

        See :meth:`TaskFamily.run` for the arguments; the metrics are mIoU, mAcc and aAcc in percent.
        """
        settings = self.check_settings(settings, spec)

        size, seed = int(settings["image_size"]), int(settings["scene_seed"])
        train = list(range(int(settings["num_train"])))
        val = list(range(100_000, 100_000 + int(settings["num_val"])))
        if ctx.limit is not None:
            val = val[: ctx.limit]
        num_classes = len(CLASS_NAMES)
        phases: dict[str, float] = {}

        start = time.perf_counter()
        # under torchrun each rank encodes every W-th chunk; the per-chunk sums are gathered and added in chunk
        # order, so the prototypes are bit-identical to one process's
        chunks = _chunks(train, ctx.batch_size)
        mine = shard(len(chunks), ctx.dist)
        partial = []
        for chunk in track([chunks[i] for i in mine], f"{spec.name}: prototypes", progress=ctx.progress):
            feats, labels = self._features(model, chunk, size, seed, ctx)
            share = F.adaptive_avg_pool2d(F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float(),
                                          feats.shape[-2:])  # [B, K, h, w]: class share of each patch
            partial.append((torch.einsum("bkhw,bchw->kc", share, feats), share.sum((0, 2, 3))))
        if ctx.dist.distributed:
            channels = model.embed_dim
            local = torch.stack([torch.cat([s.flatten(), w]) for s, w in partial]) if partial else \
                torch.zeros(0, num_classes * (channels + 1))
            merged = gather_in_order(ctx.dist, list(mine), local).float()
            partial = [(row[:-num_classes].view(num_classes, channels), row[-num_classes:]) for row in merged]
        sums, weights = None, torch.zeros(num_classes)
        for batch_sums, batch_weights in partial:
            sums = batch_sums if sums is None else sums + batch_sums
            weights += batch_weights
        prototypes = F.normalize(sums / weights.clamp(min=1e-6)[:, None], dim=1)
        phases["prototypes_s"] = time.perf_counter() - start

        start = time.perf_counter()
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        chunks = _chunks(val, ctx.batch_size)
        for i in track(shard(len(chunks), ctx.dist), f"{spec.name}: evaluate", progress=ctx.progress):
            feats, labels = self._features(model, chunks[i], size, seed, ctx)
            scores = torch.einsum("bchw,kc->bkhw", feats, prototypes)
            scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            confusion += confusion_matrix(scores.argmax(1), labels, num_classes)
        all_sum_(ctx.dist, confusion)  # pixel counts held exactly in float64: any summation order is exact
        phases["evaluate_s"] = time.perf_counter() - start
        metrics, per_class = iou_metrics(confusion)
        return TaskOutcome(
            main_metric=spec.metric, metrics=metrics, num_samples=len(val),
            per_class=dict(zip(CLASS_NAMES, per_class, strict=True)), phases=phases,
        )

    @staticmethod
    @torch.inference_mode()
    def _features(model: DenseModel, indices: list[int], size: int, seed: int,
                  ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised final patch features ``[B, C, h, w]`` (float32, CPU) and labels ``[B, S, S]`` of scenes."""
        scenes = render_batch(indices, size, seed)
        images, labels = scenes.images, scenes.labels
        images = model.normalize(images.to(ctx.device))
        feats = model.forward_tokens(images)[0].patches  # float32 whatever the model's precision
        return F.normalize(feats, dim=1).cpu(), labels


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
