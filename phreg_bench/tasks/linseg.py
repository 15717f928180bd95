"""``linseg``: linear-probe semantic segmentation on frozen final-layer patch features (paper Table 2).

Protocol (PH-Reg ``DINOv2_full/evaluation/segmentation/fine-tune/configs/{voc21,ade20k}_cfg.py``, reference
notes §2.2): the frozen backbone (with the method applied) gives final-layer patch tokens; a BatchNorm +
1x1-conv head (:class:`~phreg_bench.probes.heads.LinearSegHead`) is trained with AdamW (lr 1e-3, wd 1e-4),
poly decay (power 0.9), batch 8, for 20k (VOC21) / 40k (ADE20K) iterations; the test image is resized so its
short side is the input size S (long side <= 2048) and predicted with S x S sliding windows (stride 341 at
S = 518), logits summed, divided by the window count and resized bilinearly to the original size.

Two honest training modes (recorded in the result):

* ``cached`` — features of fixed training views are extracted once into the feature cache and the head
  trains from disk. The views are the test geometry's S x S sliding windows of each training image
  (``cache_windows: slide``; or only the centre window, ``center``) and their horizontal flips; the label of a
  view is its window of the nearest-resized label map. No scale jitter, random crop or photometric
  distortion: those change the input and cannot reuse cached features.
* ``full`` — the paper-exact online pipeline (random resize 0.5-2.0, random crop with ``cat_max_ratio``
  0.75, flip, photometric distortion, pad) with a backbone forward pass at every iteration.

Test features are always deterministic (the same windows the paper evaluates) and are cached in both modes.
Cache size (measured, ViT-B at 518, fp16): 2.26 MiB per view, about 9 MiB per 500x375 training image with
``slide`` windows (VOC train_aug ~95 GiB, ADE20K ~180 GiB); ``center`` halves that, ``full`` needs none.
``RunContext.limit`` caps the training images as well as the evaluated ones (the result is marked partial).
The protocol this family shares with ``depth`` (settings, budget, fixed views, sampling) is
:mod:`phreg_bench.probes.protocol`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from phreg_bench.geometry import check_window_settings, resize_image_array, resize_label
from phreg_bench.methods.base import DenseModel
from phreg_bench.probes import features as feats
from phreg_bench.probes.augment import seg_train_augment
from phreg_bench.probes.cache import ArraySpec
from phreg_bench.probes.ddp import check_batch_split, data_parallel, local_part, scale_to_global, unwrap
from phreg_bench.probes.heads import LinearSegHead
from phreg_bench.probes.losses import seg_cross_entropy
from phreg_bench.probes.protocol import (
    WINDOW_OPTION_NAMES,
    ProbeSettings,
    ViewTable,
    infinite_order,
    manifest,
    resolve_input_size,
    resolve_stride,
    train_limit,
)
from phreg_bench.probes.schedules import poly_lr, set_lr
from phreg_bench.progress import track
from phreg_bench.protocol_settings import require
from phreg_bench.tasks.base import RunContext, TaskOutcome, TaskSpec
from phreg_bench.tasks.probe_family import ProbeFamily
from phreg_core.distributed import shard


@dataclass(frozen=True, kw_only=True)
class LinsegSettings(ProbeSettings):
    """A ``linseg`` protocol (``tasks/linseg/_base.yaml``; sources of each number there)."""

    cache_windows: Literal["slide", "center"] = "slide"
    input_size: int | Literal["auto"]
    slide_stride: int | Literal["auto"]
    resize_long_max: int
    poly_power: float
    eta_min: float
    ratio_range: tuple[float, float]
    cat_max_ratio: float
    train_split: str

    def validate(self) -> None:
        super().validate()
        require("input_size", self.input_size == "auto" or self.input_size > 0,
                f"must be 'auto' or > 0, got {self.input_size}")
        require("slide_stride", self.slide_stride == "auto" or self.slide_stride > 0,
                f"must be 'auto' or > 0, got {self.slide_stride}")
        if self.input_size != "auto" and self.slide_stride != "auto":  # "auto" is checked once resolved
            check_window_settings(self.input_size, self.slide_stride, WINDOW_OPTION_NAMES)
        require("resize_long_max", self.resize_long_max > 0, f"must be > 0, got {self.resize_long_max}")
        require("poly_power", self.poly_power >= 0, f"must be >= 0, got {self.poly_power}")
        require("eta_min", 0 <= self.eta_min <= self.lr, f"must be in [0, lr], got {self.eta_min}")
        require("ratio_range", 0 < self.ratio_range[0] <= self.ratio_range[1],
                f"must be [low, high] with 0 < low <= high, got {list(self.ratio_range)}")
        require("cat_max_ratio", 0 < self.cat_max_ratio <= 1, f"must be in (0, 1], got {self.cat_max_ratio}")


def _mean_pixel(model: DenseModel) -> np.ndarray:
    return np.asarray(model.mean, dtype=np.float32) * 255.0


class LinearProbeSegmentation(ProbeFamily):
    name = "linseg"
    needs_text = False
    settings_class = LinsegSettings

    def data_splits(self, spec: TaskSpec, protocol: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """``(dataset, split, check options)`` of every split a run reads: the evaluated one and ``train_split``
        (what ``phreg-bench data check`` must check)."""
        _, settings = spec.protocol(protocol if protocol in spec.protocols else None)
        splits = [(spec.dataset, spec.split, {})]
        if settings.get("train_split", spec.split) != spec.split:
            splits.append((spec.dataset, settings["train_split"], {}))
        return splits

    # -- the run --------------------------------------------------------------------------------------
    def run(self, model: DenseModel, spec: TaskSpec, settings: dict[str, Any], ctx: RunContext) -> TaskOutcome:
        """Train a linear head (float32) on ``model``'s frozen unprojected final patch tokens ``[B, embed_dim,
        h, w]`` and evaluate it by sliding windows. See :meth:`TaskFamily.run`; metrics in percent."""
        from phreg_bench.datasets.catalogue import DATASETS

        settings = self.check_settings(settings, spec)
        size = resolve_input_size(settings["input_size"], model.patch_size)
        stride = resolve_stride(settings["slide_stride"], size)
        check_window_settings(size, stride, WINDOW_OPTION_NAMES)  # before any data is read
        long_max = int(settings["resize_long_max"])
        mode = settings["train_features"]
        check_batch_split(int(settings["batch_size"]), ctx.dist, task=spec.name)
        reader = DATASETS.get(spec.dataset)
        train_set = reader(ctx.data_root, split=settings["train_split"], limit=train_limit(settings, ctx.limit))
        val_set = reader(ctx.data_root, split=spec.split, limit=ctx.limit)
        num_classes = int(reader.num_classes)
        resolved = {"input_size": size, "slide_stride": stride, "grid": size // model.patch_size,
                    "train_images": len(train_set), "val_images": len(val_set), "num_classes": num_classes}
        phases: dict[str, float] = {}
        cache, cache_kind = feats.open_cache(ctx, model)
        try:
            start = time.perf_counter()
            val_views = ViewTable.build(val_set, size, stride, long_max, "slide", flips=False)
            val_entry, val_status = self._extract(model, ctx, cache, val_set, val_views, size, spec.split,
                                                  settings, labels=False)
            phases["extract_val_s"] = time.perf_counter() - start

            torch.manual_seed(ctx.seed)
            head = LinearSegHead(model.embed_dim, num_classes, batchnorm=bool(settings["head_batchnorm"]))
            head = data_parallel(head.to(ctx.device), ctx.dist)  # DDP under torchrun (probes/ddp.py)
            start = time.perf_counter()
            if mode == "cached":
                train_views = ViewTable.build(train_set, size, stride, long_max, settings["cache_windows"],
                                              flips=True)
                train_entry, train_status = self._extract(model, ctx, cache, train_set, train_views, size,
                                                          settings["train_split"], settings, labels=True)
                phases["extract_train_s"] = time.perf_counter() - start
                start = time.perf_counter()
                self._train_cached(head, train_entry, settings, ctx, spec.name)
                resolved["train_views"] = int(len(train_views.rows))
            else:
                train_status = None
                self._train_full(head, model, train_set, size, settings, ctx, spec.name)
            phases["train_s"] = time.perf_counter() - start
            iters = int(settings["iters"])
            speed = {"train_iters_per_s": round(iters / max(phases["train_s"], 1e-9), 3)}

            start = time.perf_counter()
            metrics, per_class = self._evaluate(unwrap(head), val_entry, val_views, val_set, num_classes, size, ctx,
                                                spec.name)
            phases["evaluate_s"] = time.perf_counter() - start
        finally:
            cache.close()
        names = _class_names(spec, reader, num_classes)
        return TaskOutcome(
            main_metric=spec.metric, metrics=metrics, num_samples=len(val_set),
            per_class=dict(zip(names, per_class, strict=True)), phases=phases,
            extra={"train_features": mode, "budget": settings["budget"], "resolved": resolved, "speed": speed,
                   "feature_cache": {"kind": cache_kind, "val": val_status, "train": train_status}},
        )

    # -- features -------------------------------------------------------------------------------------
    def _extract(self, model: DenseModel, ctx, cache, dataset, views: ViewTable, size: int, split: str,
                 settings: dict[str, Any], *, labels: bool):
        grid = size // model.patch_size
        arrays = {"patches": ArraySpec((model.embed_dim, grid, grid), settings["cache_dtype"])}
        if labels:
            arrays["labels"] = ArraySpec((size, size), "uint8")
        fields = feats.cache_fields(model, ctx, task="linseg", dataset=getattr(dataset, "name", type(dataset).__name__),
                                    split=split, manifest=manifest(dataset), views=_views_digest(views),
                                    geometry={"input_size": size, "resize": "keep-ratio bilinear",
                                              "pad": "mean pixel"})
        entry = cache.entry(fields, arrays, len(views.rows))
        mean = _mean_pixel(model)

        def produce(rows: np.ndarray) -> dict[str, np.ndarray]:
            images, maps, loaded = [], [], {}
            for row in rows:
                sample, y1, y2, x1, x2, flip = views.rows[row]
                if sample not in loaded:
                    loaded.clear()
                    item = dataset[int(sample)]
                    h, w = views.resized[sample]
                    loaded[sample] = (resize_image_array(item.image, (h, w)),
                                      resize_label(item.label, (h, w)) if labels else None)
                image, label = loaded[sample]
                window = np.full((size, size, 3), mean, dtype=np.float32)
                window[: y2 - y1, : x2 - x1] = image[y1:y2, x1:x2]
                if labels:
                    lab = np.full((size, size), 255, dtype=np.uint8)
                    lab[: y2 - y1, : x2 - x1] = label[y1:y2, x1:x2]
                if flip:
                    window = window[:, ::-1]
                    lab = lab[:, ::-1] if labels else None
                images.append(window)
                if labels:
                    maps.append(lab)
            patches, _ = feats.extract(model, np.stack(images), ctx)
            out = {"patches": patches.cpu().numpy()}
            if labels:
                out["labels"] = np.stack(maps)
            return out

        status = feats.fill(entry, produce, max(1, ctx.batch_size), ctx, f"{split}: features")
        return entry, status

    # -- training -------------------------------------------------------------------------------------
    def _optimizer(self, head, settings):
        return torch.optim.AdamW(head.parameters(), lr=float(settings["lr"]),
                                 weight_decay=float(settings["weight_decay"]), betas=tuple(settings["betas"]))

    def _step(self, head, optimizer, features, labels, step, settings, env):
        set_lr(optimizer, poly_lr(float(settings["lr"]), step, int(settings["iters"]),
                                  power=float(settings["poly_power"]), eta_min=float(settings["eta_min"])))
        # the cross-entropy averages over every pixel of the global batch (probes/ddp.py)
        loss = scale_to_global(seg_cross_entropy(head(features), labels), len(labels), int(settings["batch_size"]),
                               env)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()  # a tensor: reading it would sync with the GPU at every step

    def _train_cached(self, head, entry, settings, ctx, name):
        head.train()
        optimizer = self._optimizer(head, settings)
        batch, iters = int(settings["batch_size"]), int(settings["iters"])
        order = infinite_order(entry.num_rows, batch * iters, ctx.seed)
        for step in track(range(iters), f"{name}: train head (cached)", progress=ctx.progress):
            rows = local_part(order[step * batch:(step + 1) * batch], ctx.dist)  # this rank's part
            # move the stored dtypes (fp16 / uint8), widen on the device: half the host-to-device traffic
            features = torch.from_numpy(entry.read("patches", rows)).to(ctx.device).float()
            labels = torch.from_numpy(entry.read("labels", rows)).to(ctx.device).long()
            self._step(head, optimizer, features, labels, step, settings, ctx.dist)

    def _train_full(self, head, model: DenseModel, dataset, size, settings, ctx, name):
        head.train()
        optimizer = self._optimizer(head, settings)
        batch, iters = int(settings["batch_size"]), int(settings["iters"])
        order = infinite_order(len(dataset), batch * iters, ctx.seed)
        data = _AugmentedSeg(dataset, order, size, ctx.seed, settings)
        # stream positions of each step's global batch; this rank loads and encodes its part only
        steps = [local_part(np.arange(step * batch, (step + 1) * batch), ctx.dist).tolist() for step in range(iters)]
        loader = torch.utils.data.DataLoader(data, batch_sampler=steps, num_workers=ctx.num_workers)
        for step, (images, labels) in enumerate(track(loader, f"{name}: train head (full)", total=iters,
                                                      progress=ctx.progress)):
            features, _ = feats.extract(model, images, ctx)
            self._step(head, optimizer, features.clone(), labels.to(ctx.device).long(), step, settings, ctx.dist)

    # -- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, head, entry, views: ViewTable, dataset, num_classes, size, ctx, name):
        from phreg_bench.metrics.segmentation import SegmentationMetric

        head.eval()
        meter = SegmentationMetric(num_classes)
        mine = shard(len(dataset), ctx.dist)  # this rank's images; the confusion matrices are summed below
        for sample in track(mine, f"{name}: evaluate", progress=ctx.progress):
            rows = views.rows_of(sample)
            features = torch.from_numpy(entry.read("patches", rows)).to(ctx.device).float()
            logits = torch.nn.functional.interpolate(head(features), size=(size, size), mode="bilinear",
                                                     align_corners=False)
            h, w = views.resized[sample]
            total = logits.new_zeros((num_classes, h, w))
            count = logits.new_zeros((1, h, w))
            for window, (_, y1, y2, x1, x2, _) in zip(logits, views.rows[rows], strict=True):
                total[:, y1:y2, x1:x2] += window[:, : y2 - y1, : x2 - x1]
                count[:, y1:y2, x1:x2] += 1
            total = torch.nn.functional.interpolate((total / count)[None], size=views.originals[sample],
                                                    mode="bilinear", align_corners=False)[0]
            meter.update(total.argmax(0).cpu(), torch.from_numpy(dataset[sample].label))
        meter.all_reduce(ctx.dist)
        result = meter.compute()
        metrics = {key: float(result[key]) for key in ("mIoU", "mAcc", "aAcc")}
        per_class = [None if np.isnan(value) else float(value) for value in result["IoU"]]
        return metrics, per_class


class _AugmentedSeg(torch.utils.data.Dataset):
    """Sample ``k`` of the training stream: image ``order[k]`` through the full augmentation pipeline."""

    def __init__(self, dataset, order: np.ndarray, size: int, seed: int, settings: dict[str, Any]):
        self.dataset, self.order, self.size, self.seed = dataset, order, size, seed
        self.ratio_range = tuple(settings["ratio_range"])
        self.cat_max_ratio = float(settings["cat_max_ratio"])

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int):
        item = self.dataset[int(self.order[k])]
        rng = np.random.default_rng([self.seed, k])
        image, label = seg_train_augment(item.image, item.label, rng, self.size, ratio_range=self.ratio_range,
                                         cat_max_ratio=self.cat_max_ratio)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(label.astype(np.int64))


def _views_digest(views: ViewTable) -> str:
    import hashlib

    return hashlib.sha256(views.rows.tobytes()).hexdigest()


def _class_names(spec: TaskSpec, reader, num_classes: int) -> list[str]:
    names = [f"class_{i}" for i in range(num_classes)]
    if spec.classes:
        from phreg_bench.tasks.specs import class_file

        lines = [line.split(",")[0].strip() for line in class_file(spec.classes).read_text().splitlines()
                 if line.strip()]
        if len(lines) == num_classes:
            names = lines
    if getattr(reader, "has_background", False):
        names[0] = "background"
    return names
