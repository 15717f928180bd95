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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from phreg_bench.geometry import check_window_settings, rescale_size, resize_image_array, resize_label, window_boxes
from phreg_bench.probes import features as feats
from phreg_bench.probes.augment import seg_train_augment
from phreg_bench.probes.cache import ArraySpec
from phreg_bench.probes.ddp import check_batch_split, data_parallel, local_part, scale_to_global, unwrap
from phreg_bench.probes.heads import LinearSegHead
from phreg_bench.probes.losses import seg_cross_entropy
from phreg_bench.probes.schedules import poly_lr, set_lr
from phreg_bench.progress import track
from phreg_bench.protocol_settings import NamedSettings, ProtocolError, require
from phreg_bench.tasks.base import RunContext, TaskFamily, TaskOutcome, TaskSpec
from phreg_core.distributed import shard
from phreg_core.errors import ConfigError
from phreg_core.images import open_image

PAPER_STRIDE = 341  # slide stride with crop 518 [PH-Reg voc21_cfg.py test_cfg]
PAPER_CROP = 518


def resolve_budget(settings: dict[str, Any], budget: str) -> dict[str, Any]:
    """Flatten ``settings['budgets'][budget]`` into the settings and record the budget name."""
    budgets = settings.pop("budgets", None)
    if budgets is not None:
        if budget not in budgets:
            raise ProtocolError(f"--budget {budget}: not defined for this task (known: {', '.join(budgets)})")
        settings.update(budgets[budget])
    settings["budget"] = budget
    return settings


@dataclass(frozen=True, kw_only=True)
class ProbeSettings(NamedSettings):
    """What both probe families (``linseg``, ``depth``) share: budget, feature mode, optimiser, schedule length.

    ``budget`` is the run's ``--budget`` (its values are flattened into the preset), never an override.
    """

    RESERVED: ClassVar[tuple[str, ...]] = ("name", "budget")
    budget: str
    train_features: Literal["cached", "full"] = "cached"  # see the module docstring
    cache_dtype: Literal["float16", "float32"] = "float16"  # storage dtype of cached features
    batch_size: int
    iters: int
    max_train_images: int | None = None  # cap on training images (quick budgets)
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    head_batchnorm: bool

    def validate(self) -> None:
        require("batch_size", self.batch_size > 0, f"must be > 0, got {self.batch_size}")
        require("iters", self.iters > 0, f"must be > 0, got {self.iters}")
        require("max_train_images", self.max_train_images is None or self.max_train_images > 0,
                f"must be null or > 0, got {self.max_train_images}")
        require("lr", self.lr > 0, f"must be > 0, got {self.lr}")
        require("weight_decay", self.weight_decay >= 0, f"must be >= 0, got {self.weight_decay}")
        require("betas", all(0 <= b < 1 for b in self.betas), f"must be two values in [0, 1), got {self.betas}")


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


class ProbeFamily(TaskFamily):
    """The probe families' shared settings resolution: the run's budget flattened into the preset."""

    def preset(self, spec: TaskSpec, protocol: str | None, ctx: RunContext) -> tuple[str, dict[str, Any]]:
        name, settings = spec.protocol(protocol)
        settings = resolve_budget(settings, ctx.budget)
        settings.pop("budget")  # set by fixed_settings, after the overrides
        return name, settings

    def fixed_settings(self, ctx: RunContext) -> dict[str, Any]:
        return {"budget": ctx.budget}


def resolve_input_size(setting: Any, patch_size: int) -> int:
    """``auto``: 518 for patch-14 backbones (DINOv2 protocol), 448 otherwise (CLIP protocol, patch 16).

    Reference notes §2.2: "Input size: CLIP models 448x448, DINOv2 518x518".
    """
    size = (518 if patch_size == 14 else 448) if setting == "auto" else int(setting)
    if size % patch_size:
        raise ConfigError(f"input size {size} is not a multiple of the patch size {patch_size}; "
                         "set it with --protocol-override input_size=N")
    return size


def resolve_stride(setting: Any, size: int) -> int:
    """``auto``: the published 341 at 518, the same overlap ratio (341/518) at other sizes.

    Only the 518/341 pair is published (PH-Reg DINOv2 configs); the CLIP stride is UNCONFIRMED.
    """
    if setting != "auto":
        return int(setting)
    return PAPER_STRIDE if size == PAPER_CROP else max(1, round(size * PAPER_STRIDE / PAPER_CROP))


WINDOW_OPTION_NAMES = ("input_size", "slide_stride")  # the window size and stride as --protocol-override names


def image_size(dataset, index: int) -> tuple[int, int]:
    """``(H, W)`` of a sample, from the image header when the reader lists paths."""
    pairs = getattr(dataset, "pairs", None)
    if pairs is not None:
        with open_image(pairs[index][1]) as image:  # header only; bad files raise one line naming them
            return image.height, image.width
    return tuple(dataset[index].image.shape[:2])


@dataclass
class ViewTable:
    """Fixed S x S views of a split: rows ``(sample, y1, y2, x1, x2, flip)`` on the resized images."""

    rows: np.ndarray  # int64 [R, 6]
    resized: list[tuple[int, int]]  # per sample (h', w') after the keep-ratio resize
    originals: list[tuple[int, int]]

    @classmethod
    def build(cls, dataset, size: int, stride: int, long_max: int, windows: str, flips: bool) -> ViewTable:
        rows, resized, originals = [], [], []
        for index in range(len(dataset)):
            height, width = image_size(dataset, index)
            h, w = rescale_size(height, width, min(long_max, size), max(long_max, size))  # mmcv scale order
            originals.append((height, width))
            resized.append((h, w))
            boxes = window_boxes(h, w, size, stride, names=WINDOW_OPTION_NAMES)
            if windows == "center":
                boxes = [boxes[len(boxes) // 2]]
            for box in boxes:
                for flip in ((0, 1) if flips else (0,)):
                    rows.append((index, *box, flip))
        return cls(np.asarray(rows, dtype=np.int64).reshape(-1, 6), resized, originals)

    def rows_of(self, sample: int) -> np.ndarray:
        return np.flatnonzero(self.rows[:, 0] == sample)


def _mean_pixel(model) -> np.ndarray:
    return np.asarray(model.backbone.info.mean, dtype=np.float32) * 255.0


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
    def run(self, model, spec: TaskSpec, settings: dict[str, Any], ctx: RunContext) -> TaskOutcome:
        from phreg_bench.registries import DATASETS

        settings = self.check_settings(settings, spec)
        info = model.backbone.info
        size = resolve_input_size(settings["input_size"], info.patch_size)
        stride = resolve_stride(settings["slide_stride"], size)
        check_window_settings(size, stride, WINDOW_OPTION_NAMES)  # before any data is read
        long_max = int(settings["resize_long_max"])
        mode = settings["train_features"]
        check_batch_split(int(settings["batch_size"]), ctx.dist, task=spec.name)
        reader = DATASETS.get(spec.dataset)
        train_set = reader(ctx.data_root, split=settings["train_split"], limit=_train_limit(settings, ctx))
        val_set = reader(ctx.data_root, split=spec.split, limit=ctx.limit)
        num_classes = int(reader.num_classes)
        resolved = {"input_size": size, "slide_stride": stride, "grid": size // info.patch_size,
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
            head = LinearSegHead(info.embed_dim, num_classes, batchnorm=bool(settings["head_batchnorm"]))
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
    def _extract(self, model, ctx, cache, dataset, views: ViewTable, size: int, split: str,
                 settings: dict[str, Any], *, labels: bool):
        info = model.backbone.info
        grid = size // info.patch_size
        arrays = {"patches": ArraySpec((info.embed_dim, grid, grid), settings["cache_dtype"])}
        if labels:
            arrays["labels"] = ArraySpec((size, size), "uint8")
        fields = feats.cache_fields(model, ctx, task="linseg", dataset=getattr(dataset, "name", type(dataset).__name__),
                                    split=split, manifest=_manifest(dataset), views=_views_digest(views),
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
        order = _infinite_order(entry.num_rows, batch * iters, ctx.seed)
        for step in track(range(iters), f"{name}: train head (cached)", progress=ctx.progress):
            rows = local_part(order[step * batch:(step + 1) * batch], ctx.dist)  # this rank's part
            # move the stored dtypes (fp16 / uint8), widen on the device: half the host-to-device traffic
            features = torch.from_numpy(entry.read("patches", rows)).to(ctx.device).float()
            labels = torch.from_numpy(entry.read("labels", rows)).to(ctx.device).long()
            self._step(head, optimizer, features, labels, step, settings, ctx.dist)

    def _train_full(self, head, model, dataset, size, settings, ctx, name):
        head.train()
        optimizer = self._optimizer(head, settings)
        batch, iters = int(settings["batch_size"]), int(settings["iters"])
        order = _infinite_order(len(dataset), batch * iters, ctx.seed)
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


def _infinite_order(num_items: int, length: int, seed: int) -> np.ndarray:
    """Concatenated random permutations (mmengine ``InfiniteSampler(shuffle=True)``), ``length`` long."""
    if num_items == 0:
        raise ConfigError("no training samples")
    rng = np.random.default_rng(seed)
    epochs = -(-length // num_items)
    return np.concatenate([rng.permutation(num_items) for _ in range(epochs)])[:length]


def _train_limit(settings: dict[str, Any], ctx: RunContext) -> int | None:
    limits = [value for value in (settings.get("max_train_images"), ctx.limit) if value is not None]
    return min(int(v) for v in limits) if limits else None


def _manifest(dataset) -> str:
    import hashlib

    if hasattr(dataset, "manifest"):
        return dataset.manifest()
    digest = hashlib.sha256()
    for sample_id, image_path, label_path in getattr(dataset, "pairs", []):
        digest.update(f"{sample_id}:{image_path.stat().st_size}:{label_path.stat().st_size}\n".encode())
    return digest.hexdigest()


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
