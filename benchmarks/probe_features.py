"""Probe speed and storage: feature extraction images/s, head-training iterations/s from the feature cache,
and cache bytes per image, at the protocols' real geometries.

    python benchmarks/probe_features.py --backbone dinov2-vit-b14 --random-init --device cuda
    python benchmarks/probe_features.py --backbone tiny-vit --size 64 --images 32      # CPU smoke

Uses the code the tasks run: ``probes.features.extract`` / ``fill`` into a ``FeatureCache`` entry, then the
segmentation head (batch 8, labels at S x S, 150 classes as ADE20K) and the depth head (batch 16, patch + CLS
features of the 416 x 544 crop, 256 bins, SigLoss + GradientLoss) trained from that entry. Random images; the
numbers measure throughput, not accuracy.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from phreg_bench.backbones.build import build_backbone
from phreg_bench.geometry import rescale_size, window_boxes
from phreg_bench.probes import features as feats
from phreg_bench.probes.cache import ArraySpec, FeatureCache
from phreg_bench.probes.heads import BinsDepthHead, LinearSegHead
from phreg_bench.probes.losses import seg_cross_entropy
from phreg_bench.probes.protocol import resolve_input_size, resolve_stride
from phreg_bench.registries import METHODS
from phreg_bench.tasks.base import RunContext
from phreg_bench.tasks.depth import depth_loss, padded_grid


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seg_views_per_image(height: int, width: int, size: int, stride: int) -> int:
    """Cached training views of one image: its sliding windows, each with a flipped copy."""
    h, w = rescale_size(height, width, size)
    return 2 * len(window_boxes(h, w, size, stride))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="tiny-vit")
    parser.add_argument("--random-init", action="store_true")
    parser.add_argument("--method", default="raw")
    parser.add_argument("--size", default="auto", help="segmentation input size (auto: 518 patch-14, else 448)")
    parser.add_argument("--depth-crop", default="416,544", help="depth training crop H,W (paper: 416,544)")
    parser.add_argument("--images", type=int, default=64, help="images to extract per measurement")
    parser.add_argument("--batch", type=int, default=16, help="extraction batch size")
    parser.add_argument("--iters", type=int, default=200, help="head-training iterations to time")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default: a temporary one)")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = METHODS.get(args.method)(build_backbone(args.backbone, random_init=args.random_init)).to(device).eval()
    model.set_precision(args.precision)
    backbone = model.backbone
    size = resolve_input_size(args.size, backbone.patch_size)
    crop = tuple(int(v) for v in args.depth_crop.split(","))
    temp = tempfile.TemporaryDirectory() if args.cache_dir is None else None
    ctx = RunContext(cache_dir=Path(temp.name if temp else args.cache_dir), device=device, precision=args.precision,
                     batch_size=args.batch)
    cache = FeatureCache(ctx.cache_dir)
    print(f"backbone {backbone.name} ({backbone.identity.architecture}), patch {backbone.patch_size}, "
          f"width {backbone.embed_dim}, device {device}, precision {args.precision}")

    # -- segmentation: extraction and training from the cache ------------------------------------------
    grid = size // backbone.patch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, args.classes, size=(args.images, size, size), dtype=np.uint8)
    entry = cache.entry({"bench": "seg", "size": size, "backbone": backbone.name},
                        {"patches": ArraySpec((backbone.embed_dim, grid, grid), "float16"),
                         "labels": ArraySpec((size, size), "uint8")}, args.images)

    def produce(rows):
        patches, _ = feats.extract(model, images[rows], ctx)
        return {"patches": patches.cpu().numpy(), "labels": labels[rows]}

    feats.extract(model, images[: min(2, args.images)], ctx)  # warm-up
    _sync(device)
    start = time.perf_counter()
    feats.fill(entry, produce, args.batch, ctx, "seg features")
    _sync(device)
    seg_ips = args.images / (time.perf_counter() - start)

    head = LinearSegHead(backbone.embed_dim, args.classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    order = rng.integers(0, args.images, size=(args.iters + 5, 8))

    def seg_step(rows):
        x = torch.from_numpy(entry.read("patches", rows)).to(device).float()
        y = torch.from_numpy(entry.read("labels", rows)).to(device).long()
        loss = seg_cross_entropy(head(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for rows in order[:5]:
        seg_step(rows)
    _sync(device)
    start = time.perf_counter()
    for rows in order[5:]:
        seg_step(rows)
    _sync(device)
    seg_its = args.iters / (time.perf_counter() - start)

    # -- depth: extraction (crop + CLS) and training from the cache -------------------------------------
    gh, gw = padded_grid(*crop, backbone.patch_size)
    crops = rng.integers(0, 256, size=(args.images, *crop, 3), dtype=np.uint8)
    depths = rng.uniform(0.5, 9.5, size=(args.images, *crop)).astype(np.float32)
    dentry = cache.entry({"bench": "depth", "crop": list(crop), "backbone": backbone.name},
                         {"patches": ArraySpec((backbone.embed_dim, gh, gw), "float16"),
                          "cls": ArraySpec((backbone.embed_dim,), "float16"), "depth": ArraySpec(crop, "float32")},
                         args.images)

    def produce_depth(rows):
        patches, cls = feats.extract(model, crops[rows], ctx, pad_to_patch=True, with_cls=True)
        return {"patches": patches.cpu().numpy(), "cls": cls.cpu().numpy(), "depth": depths[rows]}

    _sync(device)
    start = time.perf_counter()
    feats.fill(dentry, produce_depth, args.batch, ctx, "depth features")
    _sync(device)
    depth_ips = args.images / (time.perf_counter() - start)

    dhead = BinsDepthHead(backbone.embed_dim).to(device)
    doptim = torch.optim.AdamW(dhead.parameters(), lr=5e-3, weight_decay=0.01)
    settings = {"max_depth": 10.0, "loss_group_size": 2, "sig_weight": 1.0, "grad_weight": 0.5,
                "gradient_loss_layout": "published"}
    dorder = rng.integers(0, args.images, size=(args.iters + 5, 16))

    def depth_step(rows):
        p = torch.from_numpy(dentry.read("patches", rows)).to(device).float()
        c = torch.from_numpy(dentry.read("cls", rows)).to(device).float()
        gt = torch.from_numpy(dentry.read("depth", rows)).to(device)[:, None]
        pred = F.interpolate(dhead(p, c), size=crop, mode="bilinear", align_corners=False)
        loss = depth_loss(pred, gt, settings, warm_up=False)
        doptim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dhead.parameters(), 35)
        doptim.step()

    for rows in dorder[:5]:
        depth_step(rows)
    _sync(device)
    start = time.perf_counter()
    for rows in dorder[5:]:
        depth_step(rows)
    _sync(device)
    depth_its = args.iters / (time.perf_counter() - start)

    # -- storage per image -------------------------------------------------------------------------------
    stride = resolve_stride("auto", size)
    voc_views = seg_views_per_image(375, 500, size, stride)  # a typical 500 x 375 VOC / ADE frame
    print(f"segmentation  S={size} grid {grid}x{grid}: extraction {seg_ips:.1f} images/s (batch {args.batch}); "
          f"head training {seg_its:.1f} it/s (batch 8, {args.classes} classes, labels {size}x{size})")
    print(f"  cache: {entry.bytes_per_row / 2**20:.2f} MiB per view (fp16 features + uint8 labels); "
          f"{voc_views} views per 500x375 image -> {voc_views * entry.bytes_per_row / 2**20:.2f} MiB per image")
    print(f"depth         crop {crop[0]}x{crop[1]} grid {gh}x{gw}: extraction {depth_ips:.1f} images/s; "
          f"head training {depth_its:.1f} it/s (batch 16, 256 bins)")
    print(f"  cache: {dentry.bytes_per_row / 2**20:.2f} MiB per view (fp16 patches + CLS, fp32 depth); "
          f"2 views per image -> {2 * dentry.bytes_per_row / 2**20:.2f} MiB per image")
    frame_grid = padded_grid(480, 640, backbone.patch_size)
    test_bytes = 2 * (backbone.embed_dim * (math.prod(frame_grid) + 1) * 2)
    print(f"  test cache: {test_bytes / 2**20:.2f} MiB per 480x640 frame (frame + flip, grid "
          f"{frame_grid[0]}x{frame_grid[1]})")
    cache.close()
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
