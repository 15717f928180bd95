"""Training augmentations of the probe protocols (``full`` mode), in NumPy / PyTorch without OpenCV.

Segmentation, mmseg 1.x pipeline of PH-Reg's ``voc21_cfg.py`` / ``ade20k_cfg.py``:
``RandomResize(scale=(2048, S), ratio_range=(0.5, 2.0), keep_ratio=True)`` ->
``RandomCrop((S, S), cat_max_ratio=0.75)`` -> ``RandomFlip(0.5)`` -> ``PhotoMetricDistortion`` ->
``Pad((S, S), pad_val=0, seg_pad_val=255)``.

Depth, Monocular-Depth-Estimation-Toolbox pipeline of PH-Reg's ``vitb_nyu_linear_config.py``:
``NYUCrop`` -> ``RandomRotate(prob=0.5, degree=2.5)`` -> ``RandomFlip(0.5)`` -> ``RandomCrop((416, 544))`` ->
``ColorAug(prob=0.5, gamma=[0.9, 1.1], brightness=[0.75, 1.25], color=[0.9, 1.1])``.

Resampling is :mod:`phreg_bench.geometry`'s, in PyTorch (bilinear without antialiasing for images,
floor-nearest for labels, like OpenCV's ``INTER_LINEAR`` / ``INTER_NEAREST``); OpenCV's fixed-point rounding is
not reproduced bit for bit. The 8-bit HSV conversion of ``PhotoMetricDistortion`` follows OpenCV's documented
formulas (H in 0..179).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from phreg_bench.datasets.base import IGNORE_INDEX
from phreg_bench.geometry import rescale_size, resize_image_array, resize_label


# -- segmentation -------------------------------------------------------------------------------------
def random_resize(image, label, rng: np.random.Generator, scale=(2048, 518), ratio_range=(0.5, 2.0)):
    """mmcv ``RandomResize`` with ``ratio_range``: scale the target (long, short) by U(ratio_range)."""
    ratio = rng.uniform(*ratio_range)
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    size = rescale_size(*image.shape[:2], min(target), max(target))  # mmcv: scale = (long, short) in any order
    return resize_image_array(image, size), resize_label(label, size)


def _crop_box(shape, crop, rng):
    margin_h, margin_w = max(shape[0] - crop[0], 0), max(shape[1] - crop[1], 0)
    top, left = int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))
    return top, top + crop[0], left, left + crop[1]


def random_crop(image, label, rng: np.random.Generator, crop=(518, 518), cat_max_ratio=0.75):
    """mmseg ``RandomCrop``: up to 10 tries for a crop whose largest class is < ``cat_max_ratio``."""
    box = _crop_box(label.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            window = label[box[0]:box[1], box[2]:box[3]]
            values, counts = np.unique(window, return_counts=True)
            counts = counts[values != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = _crop_box(label.shape, crop, rng)
    return image[box[0]:box[1], box[2]:box[3]], label[box[0]:box[1], box[2]:box[3]]


def rgb_to_hsv8(image: np.ndarray) -> np.ndarray:
    """OpenCV ``COLOR_RGB2HSV`` for uint8: H in 0..179 (degrees / 2), S and V in 0..255."""
    rgb = image.astype(np.float64)
    v = rgb.max(axis=2)
    delta = v - rgb.min(axis=2)
    s = np.where(v > 0, 255.0 * delta / np.maximum(v, 1e-12), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(delta, 1e-12)
    h = np.where(v == r, 60.0 * (g - b) / safe, np.where(v == g, 120.0 + 60.0 * (b - r) / safe,
                                                          240.0 + 60.0 * (r - g) / safe))
    h = np.where(delta == 0, 0.0, h)
    h = np.where(h < 0, h + 360.0, h)
    out = np.stack([np.round(h / 2) % 180, np.round(s), v], axis=2)
    return out.astype(np.uint8)


def hsv8_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """OpenCV ``COLOR_HSV2RGB`` for uint8 (inverse of :func:`rgb_to_hsv8`)."""
    h = hsv[..., 0].astype(np.float64) * 2.0 / 60.0
    s = hsv[..., 1].astype(np.float64) / 255.0
    v = hsv[..., 2].astype(np.float64)
    sector = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((*hsv.shape[:2], 3))
    for index, (r, g, b) in enumerate(table):
        mask = sector == index
        out[mask] = np.stack([r[mask], g[mask], b[mask]], axis=1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` (each step with probability 1/2; contrast first or last)."""
    if rng.integers(2):
        image = _convert(image, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast))
    if rng.integers(2):
        hsv = rgb_to_hsv8(image)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*saturation))
        image = hsv8_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv8(image)
        hsv[..., 0] = (hsv[..., 0].astype(int) + rng.integers(-hue_delta, hue_delta)) % 180
        image = hsv8_to_rgb(hsv)
    if mode == 0 and rng.integers(2):
        image = _convert(image, alpha=rng.uniform(*contrast))
    return image


def pad_to(image: np.ndarray, label: np.ndarray, size: tuple[int, int]):
    """Pad bottom/right to ``size``: image with 0, label with 255 (mmseg ``Pad``)."""
    h, w = label.shape
    if (h, w) == tuple(size):
        return image, label
    out_image = np.zeros((*size, 3), dtype=image.dtype)
    out_label = np.full(size, IGNORE_INDEX, dtype=label.dtype)
    out_image[:h, :w], out_label[:h, :w] = image, label
    return out_image, out_label


def seg_train_augment(image, label, rng: np.random.Generator, size: int, *, ratio_range=(0.5, 2.0),
                      cat_max_ratio=0.75):
    """The full segmentation training pipeline; returns ``uint8 [S, S, 3]`` and ``int64 [S, S]``."""
    image, label = random_resize(image, label, rng, scale=(2048, size), ratio_range=ratio_range)
    image, label = random_crop(image, label, rng, crop=(size, size), cat_max_ratio=cat_max_ratio)
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    image = photometric_distortion(np.ascontiguousarray(image), rng)
    return pad_to(image, np.ascontiguousarray(label), (size, size))


# -- depth --------------------------------------------------------------------------------------------
def rotate(array: np.ndarray, degrees: float, mode: str) -> np.ndarray:
    """mmcv ``imrotate`` (counter-clockwise, centre ``((w-1)/2, (h-1)/2)``, zero border, same size)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor.permute(2, 0, 1)[None] if tensor.ndim == 3 else tensor[None, None]
    h, w = tensor.shape[-2:]
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # output pixel (x, y) samples input at R^-1 (x - c) + c, in pixel units; convert to normalised coords
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    cx, cy = (w - 1) / 2, (h - 1) / 2
    src_x = cos * (xs - cx) - sin * (ys - cy) + cx
    src_y = sin * (xs - cx) + cos * (ys - cy) + cy
    grid = torch.stack([(2 * src_x + 1) / w - 1, (2 * src_y + 1) / h - 1], dim=-1)[None]
    out = F.grid_sample(tensor, grid, mode=mode, padding_mode="zeros", align_corners=False)[0]
    out = out.permute(1, 2, 0) if array.ndim == 3 else out[0]
    return out.numpy()


def depth_train_augment(image, depth, rng: np.random.Generator, crop: tuple[int, int], nyu_crop_box,
                        *, rotate_prob=0.5, degree=2.5, color_prob=0.5, gamma_range=(0.9, 1.1),
                        brightness_range=(0.75, 1.25), color_range=(0.9, 1.1)):
    """The full NYU training pipeline; returns float ``[h, w, 3]`` pixels in 0..255 and depth ``[h, w]``."""
    top, bottom, left, right = nyu_crop_box
    image = image[top:bottom, left:right].astype(np.float32)
    depth = depth[top:bottom, left:right]
    angle = rng.uniform(-degree, degree)  # drawn whether or not it is applied, as the reference does
    if rng.random() < rotate_prob:
        image = rotate(image, angle, "bilinear")
        depth = rotate(depth, angle, "nearest")
    if rng.random() < 0.5:
        image, depth = image[:, ::-1], depth[:, ::-1]
    box = _crop_box(depth.shape, crop, rng)
    image, depth = image[box[0]:box[1], box[2]:box[3]], depth[box[0]:box[1], box[2]:box[3]]
    if rng.random() < color_prob:
        # ColorAug on 0..255 values: image ** gamma * brightness * per-channel colour, then clip
        image = image ** rng.uniform(*gamma_range) * rng.uniform(*brightness_range)
        image = np.clip(image * rng.uniform(*color_range, size=3)[None, None], 0, 255)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(depth, dtype=np.float32)
