"""``depth``: NYUv2 monocular depth with a linear bins head on frozen features (paper Table 2).

Protocol (PH-Reg ``DINOv2_full/evaluation/depth/evaluation/configs/vitb_nyu_linear_config.py``, the DINOv2 /
DVT linear depth protocol; reference notes §2.3):

* features: final-layer patch tokens concatenated with the CLS token; the input is zero-padded (normalised
  space, centred) to a multiple of the patch size (``CenterPadding``);
* head: :class:`~phreg_bench.probes.heads.BinsDepthHead` (256 uniform bins in [1e-3, 10] m, AdaBins linear
  normalisation, x4 upsampling); the prediction is bilinearly resized to the target size;
* loss: ``SigLoss`` (weight 1, warm-up for the first 100 iterations) + 0.5 x ``GradientLoss``, both on the
  valid pixels ``0 < gt <= 10``; computed per group of 2 images (2 images per GPU x 8 GPUs, gradients
  averaged by DDP) and averaged over the groups of the batch of 16;
* AdamW lr 5e-3, wd 0.01, grad-norm clip 35, cosine annealing with 12,800 linear warm-up iterations, mmcv
  one-cycle beta1, 30,000 iterations;
* train pipeline: NYU crop ``[45:472, 43:608]``, random rotation (p 0.5, +-2.5 deg), flip, random crop
  416 x 544, colour augmentation (p 0.5); test: the whole 480 x 640 frame and its flip, predictions clamped
  to [1e-3, 10] m, resized to the frame, the flipped one flipped back, averaged;
* metrics (:mod:`phreg_bench.metrics.depth`): Eigen crop, 1e-3 < gt < 10, per image, then averaged.

Training modes as in ``linseg``: ``cached`` trains from cached features of the centre 416 x 544 crop of the
NYU-cropped frame and its horizontal flip (no rotation, random crop or colour augmentation); ``full`` runs
the paper-exact pipeline online. The test features (frame + flip) are cached in both modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from phreg_bench.datasets.base import DatasetError
from phreg_bench.datasets.nyu import NYUv2Depth
from phreg_bench.methods.base import DenseModel
from phreg_bench.metrics.depth import DepthMeter, scaled_box
from phreg_bench.probes import features as feats
from phreg_bench.probes.augment import depth_train_augment
from phreg_bench.probes.cache import ArraySpec
from phreg_bench.probes.ddp import check_batch_split, data_parallel, local_part, unwrap, zero_loss
from phreg_bench.probes.heads import BinsDepthHead
from phreg_bench.probes.losses import GRADIENT_LAYOUTS, gradient_loss, sig_loss
from phreg_bench.probes.protocol import ProbeSettings, infinite_order, train_limit
from phreg_bench.probes.schedules import cosine_warmup_lr, one_cycle_beta1, set_lr
from phreg_bench.progress import track
from phreg_bench.protocol_settings import Settings, require
from phreg_bench.tasks.base import RunContext, TaskOutcome, TaskSpec
from phreg_bench.tasks.probe_family import ProbeFamily
from phreg_core.distributed import DistEnv, all_sum_int, shard
from phreg_core.errors import ConfigError


def padded_grid(height: int, width: int, patch: int) -> tuple[int, int]:
    return -(-height // patch), -(-width // patch)


def _range(key: str, pair: tuple[float, float], low: float = 0.0) -> None:
    require(key, low <= pair[0] <= pair[1], f"must be [low, high] with {low} <= low <= high, got {list(pair)}")


@dataclass(frozen=True, kw_only=True)
class OneCycleMomentum(Settings):
    """mmcv ``OneCycleMomentumUpdater`` beta1 schedule (``momentum`` in ``tasks/depth/nyu.yaml``)."""

    policy: Literal["one-cycle"]
    base: float
    max: float
    pct_start: float

    def validate(self) -> None:
        require("base", 0 <= self.base <= self.max < 1, f"must satisfy 0 <= base <= max < 1, got {self.base}")
        require("pct_start", 0 < self.pct_start < 1, f"must be in (0, 1), got {self.pct_start}")


@dataclass(frozen=True, kw_only=True)
class DepthSettings(ProbeSettings):
    """A ``depth`` protocol (``tasks/depth/nyu.yaml``; sources of each number there)."""

    train_source: Literal["sync", "labeled"]
    test_source: Literal["auto", "sync", "labeled"] = "auto"
    nyu_crop: tuple[int, int, int, int]  # top, bottom, left, right on the 480 x 640 frame
    train_crop: tuple[int, int]
    flip_test: bool
    eigen_crop: bool
    min_depth: float  # metres
    max_depth: float  # metres
    n_bins: int
    bins_strategy: Literal["UD"]
    norm_strategy: Literal["linear", "softmax", "sigmoid"]
    upsample: int
    loss_group_size: int
    sig_weight: float
    sig_warmup_iters: int
    grad_weight: float
    gradient_loss_layout: Literal[GRADIENT_LAYOUTS] = "published"
    grad_clip: float
    warmup_iters: int
    warmup_ratio: float
    min_lr_ratio: float
    momentum: OneCycleMomentum
    rotate_prob: float
    rotate_degree: float
    color_prob: float
    gamma_range: tuple[float, float]
    brightness_range: tuple[float, float]
    color_range: tuple[float, float]

    def validate(self) -> None:
        super().validate()
        top, bottom, left, right = self.nyu_crop
        require("nyu_crop", 0 <= top < bottom and 0 <= left < right,
                f"must be [top, bottom, left, right] with top < bottom and left < right, got {list(self.nyu_crop)}")
        require("train_crop", min(self.train_crop) > 0, f"must be two sizes > 0, got {list(self.train_crop)}")
        require("min_depth", self.min_depth > 0, f"must be > 0, got {self.min_depth}")
        require("max_depth", self.max_depth > self.min_depth, f"must be > min_depth, got {self.max_depth}")
        for key in ("n_bins", "upsample", "loss_group_size"):
            require(key, getattr(self, key) > 0, f"must be > 0, got {getattr(self, key)}")
        for key in ("sig_weight", "sig_warmup_iters", "grad_weight", "warmup_iters", "min_lr_ratio", "rotate_degree"):
            require(key, getattr(self, key) >= 0, f"must be >= 0, got {getattr(self, key)}")
        require("grad_clip", self.grad_clip > 0, f"must be > 0, got {self.grad_clip}")
        require("warmup_ratio", 0 < self.warmup_ratio <= 1, f"must be in (0, 1], got {self.warmup_ratio}")
        for key in ("rotate_prob", "color_prob"):
            require(key, 0 <= getattr(self, key) <= 1, f"must be in [0, 1], got {getattr(self, key)}")
        for key in ("gamma_range", "brightness_range", "color_range"):
            _range(key, getattr(self, key))


class LinearProbeDepth(ProbeFamily):
    name = "depth"
    needs_text = False
    settings_class = DepthSettings

    def data_splits(self, spec: TaskSpec, protocol: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        """``(dataset, split, check options)`` of every split a run reads: the test frames and the training
        frames, each from its protocol source (what ``phreg-bench data check`` must check)."""
        _, settings = spec.protocol(protocol if protocol in spec.protocols else None)
        return [(spec.dataset, "test", {"source": settings.get("test_source", "auto")}),
                (spec.dataset, "train", {"source": settings.get("train_source", "auto")})]

    def run(self, model: DenseModel, spec: TaskSpec, settings: dict[str, Any], ctx: RunContext) -> TaskOutcome:
        """Train a bins depth head (float32) on ``model``'s frozen unprojected final patch tokens and CLS token
        (``model`` needs one: :attr:`DenseModel.has_class_token`) and evaluate it on NYUv2 test frames. See
        :meth:`TaskFamily.run`; RMSE in metres."""
        settings = self.check_settings(settings, spec)
        mode = settings["train_features"]
        check_batch_split(int(settings["batch_size"]), ctx.dist, group=int(settings["loss_group_size"]), task=spec.name)
        try:
            train_set = NYUv2Depth(ctx.data_root, "train", source=settings["train_source"],
                                   limit=train_limit(settings, ctx.limit))
        except DatasetError as error:
            if settings["train_source"] != "sync":
                raise
            raise DatasetError(f"{error} To train on the 795 labelled frames of nyu_depth_v2_labeled.mat instead, "
                               "use --protocol labeled795.") from error
        test_set = NYUv2Depth(ctx.data_root, "test", source=settings["test_source"], limit=ctx.limit)
        frame = test_set[0].image.shape[:2]
        crop = tuple(int(v) for v in settings["train_crop"])
        resolved = {"train_source": train_set.source, "test_source": test_set.source, "frame": list(frame),
                    "test_grid": list(padded_grid(*frame, model.patch_size)),
                    "train_grid": list(padded_grid(*crop, model.patch_size)),
                    "nyu_crop": list(scaled_box(tuple(settings["nyu_crop"]), frame)),
                    "train_images": len(train_set), "test_images": len(test_set)}
        phases: dict[str, float] = {}
        cache, cache_kind = feats.open_cache(ctx, model)
        try:
            start = time.perf_counter()
            test_entry, test_status = self._extract_test(model, ctx, cache, test_set, frame, settings)
            phases["extract_test_s"] = time.perf_counter() - start

            torch.manual_seed(ctx.seed)
            head = BinsDepthHead(model.embed_dim, n_bins=int(settings["n_bins"]),
                                 min_depth=float(settings["min_depth"]), max_depth=float(settings["max_depth"]),
                                 bins_strategy=settings["bins_strategy"], norm_strategy=settings["norm_strategy"],
                                 upsample=int(settings["upsample"]), batchnorm=bool(settings["head_batchnorm"]))
            head = data_parallel(head.to(ctx.device), ctx.dist)  # DDP under torchrun (probes/ddp.py)
            start = time.perf_counter()
            train_status = None
            if mode == "cached":
                entry, train_status = self._extract_train(model, ctx, cache, train_set, crop, settings)
                phases["extract_train_s"] = time.perf_counter() - start
                start = time.perf_counter()
                self._train(head, _cached_batches(entry, settings, ctx), settings, ctx, spec.name)
            else:
                self._train(head, _online_batches(model, train_set, crop, settings, ctx), settings, ctx, spec.name)
            phases["train_s"] = time.perf_counter() - start
            speed = {"train_iters_per_s": round(int(settings["iters"]) / max(phases["train_s"], 1e-9), 3)}

            start = time.perf_counter()
            metrics = self._evaluate(unwrap(head), test_entry, test_set, frame, settings, ctx, spec.name)
            phases["evaluate_s"] = time.perf_counter() - start
        finally:
            cache.close()
            train_set.close()
            test_set.close()
        return TaskOutcome(
            main_metric=spec.metric, metrics=metrics, num_samples=len(test_set), phases=phases,
            extra={"train_features": mode, "budget": settings["budget"], "resolved": resolved, "speed": speed,
                   "feature_cache": {"kind": cache_kind, "test": test_status, "train": train_status}},
        )

    # -- features -------------------------------------------------------------------------------------
    def _arrays(self, model: DenseModel, size: tuple[int, int], settings, depth: tuple[int, int] | None):
        gh, gw = padded_grid(*size, model.patch_size)
        arrays = {"patches": ArraySpec((model.embed_dim, gh, gw), settings["cache_dtype"]),
                  "cls": ArraySpec((model.embed_dim,), settings["cache_dtype"])}
        if depth is not None:
            arrays["depth"] = ArraySpec(depth, "float32")
        return arrays

    def _extract_test(self, model: DenseModel, ctx, cache, dataset: NYUv2Depth, frame, settings):
        fields = feats.cache_fields(model, ctx, task="depth", dataset="nyuv2", split="test", source=dataset.source,
                                    manifest=dataset.manifest(), geometry={"frame": list(frame), "views": "frame+flip",
                                                                           "pad": "center zero"})
        entry = cache.entry(fields, self._arrays(model, frame, settings, None), 2 * len(dataset))

        def produce(rows: np.ndarray) -> dict[str, np.ndarray]:
            images = []
            for row in rows:
                image = dataset[int(row) // 2].image
                if image.shape[:2] != tuple(frame):
                    raise ConfigError(f"NYUv2 test frame {dataset.ids()[int(row) // 2]} is {image.shape[:2]}, "
                                     f"expected {tuple(frame)} like the first frame")
                images.append(image[:, ::-1] if row % 2 else image)
            patches, cls = feats.extract(model, np.stack(images), ctx, pad_to_patch=True, with_cls=True)
            return {"patches": patches.cpu().numpy(), "cls": cls.cpu().numpy()}

        return entry, feats.fill(entry, produce, max(1, ctx.batch_size), ctx, "nyu test: features")

    def _extract_train(self, model: DenseModel, ctx, cache, dataset: NYUv2Depth, crop, settings):
        fields = feats.cache_fields(model, ctx, task="depth", dataset="nyuv2", split="train", source=dataset.source,
                                    manifest=dataset.manifest(),
                                    geometry={"nyu_crop": list(settings["nyu_crop"]), "crop": list(crop),
                                              "views": "centre crop+flip", "pad": "center zero"})
        entry = cache.entry(fields, self._arrays(model, crop, settings, crop), 2 * len(dataset))

        def produce(rows: np.ndarray) -> dict[str, np.ndarray]:
            images, depths = [], []
            for row in rows:
                sample = dataset[int(row) // 2]
                image, depth = centre_view(sample.image, sample.depth, crop, tuple(settings["nyu_crop"]))
                if row % 2:
                    image, depth = image[:, ::-1], depth[:, ::-1]
                images.append(image)
                depths.append(depth)
            patches, cls = feats.extract(model, np.stack(images), ctx, pad_to_patch=True, with_cls=True)
            return {"patches": patches.cpu().numpy(), "cls": cls.cpu().numpy(), "depth": np.stack(depths)}

        return entry, feats.fill(entry, produce, max(1, ctx.batch_size), ctx, "nyu train: features")

    # -- training -------------------------------------------------------------------------------------
    def _train(self, head: BinsDepthHead, batches, settings, ctx, name) -> None:
        head.train()
        lr0, iters = float(settings["lr"]), int(settings["iters"])
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr0, weight_decay=float(settings["weight_decay"]),
                                      betas=tuple(settings["betas"]))
        momentum = settings["momentum"]
        for step, (patches, cls, gt) in enumerate(track(batches, f"{name}: train head", total=iters,
                                                        progress=ctx.progress)):
            lr = cosine_warmup_lr(lr0, step, iters, warmup_iters=int(settings["warmup_iters"]),
                                  warmup_ratio=float(settings["warmup_ratio"]),
                                  min_lr_ratio=float(settings["min_lr_ratio"]))
            beta1 = one_cycle_beta1(step, iters, base=float(momentum["base"]), maximum=float(momentum["max"]),
                                    pct_start=float(momentum["pct_start"]))
            set_lr(optimizer, lr, beta1)
            pred = F.interpolate(head(patches, cls), size=gt.shape[-2:], mode="bilinear", align_corners=False)
            loss = depth_loss(pred, gt, settings, warm_up=step < int(settings["sig_warmup_iters"]), env=ctx.dist)
            if loss is None:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), max_norm=float(settings["grad_clip"]), norm_type=2)
            optimizer.step()

    # -- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, head, entry, dataset: NYUv2Depth, frame, settings, ctx, name) -> dict[str, float]:
        head.eval()
        meter = DepthMeter(min_depth=float(settings["min_depth"]), max_depth=float(settings["max_depth"]),
                           eigen_crop=bool(settings["eigen_crop"]))
        views = 2 if settings["flip_test"] else 1
        mine = shard(len(dataset), ctx.dist)  # this rank's frames; per-frame metrics are gathered below
        for index in track(mine, f"{name}: evaluate", progress=ctx.progress):
            rows = [2 * index, 2 * index + 1][:views]
            patches = torch.from_numpy(entry.read("patches", rows)).to(ctx.device).float()
            cls = torch.from_numpy(entry.read("cls", rows)).to(ctx.device).float()
            pred = head(patches, cls).clamp(float(settings["min_depth"]), float(settings["max_depth"]))
            pred = F.interpolate(pred, size=tuple(frame), mode="bilinear", align_corners=False)[:, 0]
            pred = (pred[0] + pred[1].flip(-1)) / 2 if views == 2 else pred[0]
            meter.update(pred.cpu().numpy(), dataset[index].depth)
        meter.all_gather(ctx.dist, list(mine))
        return meter.compute()


def depth_loss(pred: torch.Tensor, gt: torch.Tensor, settings: dict[str, Any], *, warm_up: bool,
               env: DistEnv | None = None):
    """Weighted SigLoss + GradientLoss, averaged over groups of ``loss_group_size`` images (None: no valid pixel).

    Under ``torchrun`` (``env``) ``pred`` holds this rank's groups of the global batch; the mean runs over the
    valid groups of *all* ranks (this rank's sum x W / the global count, which DDP's averaging turns back
    into the single-process gradient; probes/ddp.py). ``None`` on every rank when no group is valid.
    """
    max_depth = float(settings["max_depth"])
    group = int(settings["loss_group_size"])
    terms = []
    for start in range(0, pred.shape[0], group):
        p, t = pred[start:start + group], gt[start:start + group]
        if not bool(((t > 0) & (t <= max_depth)).any()):
            continue  # nothing to supervise in this group (the reference would produce NaN)
        value = float(settings["sig_weight"]) * sig_loss(p, t, max_depth=max_depth, warm_up=warm_up)
        if float(settings["grad_weight"]):
            value = value + float(settings["grad_weight"]) * gradient_loss(
                p, t, max_depth=max_depth, layout=settings["gradient_loss_layout"])
        terms.append(value)
    if env is not None and env.distributed:
        total = all_sum_int(env, len(terms))
        if total == 0:
            return None
        local = torch.stack(terms).sum() if terms else zero_loss(pred)
        return local * (env.world_size / total)
    return torch.stack(terms).mean() if terms else None


def centre_view(image: np.ndarray, depth: np.ndarray, crop: tuple[int, int], nyu_crop) -> tuple[np.ndarray, np.ndarray]:
    """The NYU crop, then the centred ``crop`` window (the cached training view)."""
    top, bottom, left, right = scaled_box(nyu_crop, image.shape[:2])
    image, depth = image[top:bottom, left:right], depth[top:bottom, left:right]
    h, w = depth.shape
    if h < crop[0] or w < crop[1]:
        raise ConfigError(f"train crop {crop} is larger than the NYU-cropped frame {h}x{w}")
    y, x = (h - crop[0]) // 2, (w - crop[1]) // 2
    return image[y:y + crop[0], x:x + crop[1]], depth[y:y + crop[0], x:x + crop[1]]


def _to_device(ctx, *arrays):
    """Move the stored dtypes (fp16 features) and widen on the device."""
    return [torch.from_numpy(np.ascontiguousarray(a)).to(ctx.device).float() for a in arrays]


def _cached_batches(entry, settings, ctx):
    batch, iters = int(settings["batch_size"]), int(settings["iters"])
    order = infinite_order(entry.num_rows, batch * iters, ctx.seed)
    group = int(settings["loss_group_size"])
    for step in range(iters):
        rows = local_part(order[step * batch:(step + 1) * batch], ctx.dist, group=group)  # this rank's groups
        patches, cls, depth = _to_device(ctx, entry.read("patches", rows), entry.read("cls", rows),
                                         entry.read("depth", rows))
        yield patches, cls, depth[:, None]


class _AugmentedDepth(torch.utils.data.Dataset):
    def __init__(self, dataset: NYUv2Depth, order: np.ndarray, crop, settings, seed: int):
        self.dataset, self.order, self.crop, self.settings, self.seed = dataset, order, crop, settings, seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int):
        sample = self.dataset[int(self.order[k])]
        s = self.settings
        box = scaled_box(tuple(s["nyu_crop"]), sample.image.shape[:2])
        image, depth = depth_train_augment(
            sample.image, sample.depth, np.random.default_rng([self.seed, k]), self.crop, box,
            rotate_prob=float(s["rotate_prob"]), degree=float(s["rotate_degree"]), color_prob=float(s["color_prob"]),
            gamma_range=tuple(s["gamma_range"]), brightness_range=tuple(s["brightness_range"]),
            color_range=tuple(s["color_range"]))
        return torch.from_numpy(image), torch.from_numpy(depth)


def _online_batches(model: DenseModel, dataset: NYUv2Depth, crop, settings, ctx):
    batch, iters = int(settings["batch_size"]), int(settings["iters"])
    order = infinite_order(len(dataset), batch * iters, ctx.seed)
    dataset.close()  # an open HDF5 handle must not be shared with forked loader workers
    group = int(settings["loss_group_size"])
    steps = [local_part(np.arange(step * batch, (step + 1) * batch), ctx.dist, group=group).tolist()
             for step in range(iters)]  # stream positions of this rank's groups of each global batch
    loader = torch.utils.data.DataLoader(_AugmentedDepth(dataset, order, crop, settings, ctx.seed),
                                         batch_sampler=steps, num_workers=ctx.num_workers)
    for images, depth in loader:
        patches, cls = feats.extract(model, images, ctx, pad_to_patch=True, with_cls=True)
        yield patches.clone(), cls.clone(), depth.to(ctx.device)[:, None]
