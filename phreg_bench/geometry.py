"""Image geometry shared by the zero-shot harness and the probes: resizing, the sliding-window layout, padding.

Resize semantics (documented choice): mmcv's ``imrescale`` size rule exactly (scale factor
``min(max_long / long side, resize / short side)``, new size ``int(x · f + 0.5)``); the interpolation is
torch's bilinear with half-pixel centres and no antialiasing — the same sampling as OpenCV's
``INTER_LINEAR`` — rounded back to integers as OpenCV's uint8 output is. OpenCV's fixed-point arithmetic can
differ by one grey level on some pixels.

Arrays: ``[B, 3, H, W]`` float tensors of grey levels (0..255) for :func:`resize_image`, ``uint8 [H, W, 3]``
NumPy images and ``[H, W]`` maps for :func:`resize_image_array` / :func:`resize_label`; sizes are ``(height,
width)`` in pixels; window boxes are ``(y1, y2, x1, x2)`` pixel bounds (end exclusive).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from phreg_core.errors import PhregError


class WindowLayoutError(PhregError, ValueError):
    """Sliding-window settings that would leave pixels uncovered; the message names the options and the fix."""


def check_window_settings(crop: int, stride: int, names: tuple[str, str] = ("crop", "stride")) -> None:
    """Refuse window settings that do not cover every pixel of every image size.

    With windows laid by :func:`window_boxes`, every pixel of every image is covered exactly when
    ``0 < stride <= crop``: consecutive windows then overlap or touch and the last one is flush with the
    edge; with ``stride > crop`` the pixels between ``crop`` and ``stride`` of the first window row are
    uncovered as soon as the image spans three windows. ``names`` are the option names as the user types
    them in ``--protocol-override`` (``crop``/``stride`` for ovseg, ``input_size``/``slide_stride`` for linseg).
    """
    crop_name, stride_name = names
    if crop <= 0 or stride <= 0:
        raise WindowLayoutError(f"{crop_name}={crop} and {stride_name}={stride}: sliding windows need both > 0")
    if stride > crop:
        raise WindowLayoutError(
            f"{stride_name}={stride} is larger than {crop_name}={crop}: sliding windows would leave pixels that "
            f"no window covers (mmseg's slide_inference refuses this too); set --protocol-override "
            f"{stride_name}=N with N <= {crop}")


def rescale_size(height: int, width: int, short: int, max_long: int = 2048) -> tuple[int, int]:
    """mmcv ``rescale_size`` for ``keep_ratio=True`` with ``scale=(max_long, short)``: ``(new_h, new_w)``."""
    factor = min(max_long / max(height, width), short / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[B, 3, H, W]`` grey levels (0..255), rounded like OpenCV's uint8 output."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    return out.round_().clamp_(0, 255)


def axis_windows(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """``(start, end)`` of mmseg's ``slide_inference`` windows along one axis of ``length`` pixels:
    ``ceil((length - crop) / stride) + 1`` windows every ``stride`` pixels, the last one flush with the edge,
    each ``min(crop, length)`` long."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for index in range(count):
        end = min(index * stride + crop, length)
        spans.append((max(end - crop, 0), end))
    return spans


def window_boxes(height: int, width: int, crop: int, stride: int,
                 names: tuple[str, str] = ("crop", "stride")) -> list[tuple[int, int, int, int]]:
    """``(y1, y2, x1, x2)`` of mmseg's ``slide_inference`` windows, row-major: the one window layout of the
    project (ovseg's harness and the linseg probe use it). Raises :class:`WindowLayoutError` (naming the
    options ``names``) for settings that leave pixels uncovered, see :func:`check_window_settings`."""
    check_window_settings(crop, stride, names)
    return [(y1, y2, x1, x2) for y1, y2 in axis_windows(height, crop, stride)
            for x1, x2 in axis_windows(width, crop, stride)]


def pad_size(height: int, width: int, patch: int) -> tuple[int, int, int, int]:
    """ClearCLIP ``compute_padsize``: ``(left, right, top, bottom)`` to reach a multiple of ``patch``."""
    left = right = top = bottom = 0
    if width % patch:
        extra = patch - width % patch
        left, right = extra // 2, extra - extra // 2
    if height % patch:
        extra = patch - height % patch
        top, bottom = extra // 2, extra - extra // 2
    return left, right, top, bottom


def resize_image_array(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``uint8 [H, W, 3]`` to ``(h, w)``: :func:`resize_image`'s resampling, back to uint8."""
    if image.shape[:2] == tuple(size):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    return resize_image(tensor, size)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of an ``[H, W]`` map (labels or depth) to ``(h, w)`` (floor-nearest, as OpenCV)."""
    if label.shape == tuple(size):
        return label
    tensor = torch.from_numpy(np.ascontiguousarray(label))[None, None]
    out = F.interpolate(tensor.double(), size=size, mode="nearest")
    return out[0, 0].to(tensor.dtype).numpy()


def center_pad(images: Tensor, multiple: int) -> Tensor:
    """Zero-pad (in normalised space) H and W up to a multiple, split evenly (DINOv2 ``CenterPadding``)."""
    pads = []
    for size in (images.shape[-1], images.shape[-2]):
        extra = -size % multiple
        pads += [extra // 2, extra - extra // 2]
    return F.pad(images, pads) if any(pads) else images
