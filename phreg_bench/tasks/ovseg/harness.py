"""The zero-shot segmentation harness of NACLIP / SCLIP / ClearCLIP / PH-Reg, without mmseg.

Per image (reference notes §2.1; ``sinahmr/NACLIP:naclip.py``, ``0raiser0/PH-Reg:zero_shot/segmentor.py``):

1. resize so the short side is ``resize`` (mmseg ``Resize(scale=(max_long, resize), keep_ratio=True)``);
2. normalise with the backbone's mean / std;
3. ``crop > 0``: slide ``crop``×``crop`` windows with ``stride`` (mmseg's ``slide_inference`` grid; all
   windows of an image have one size, so they are batched); ``crop == 0``: the whole image at once.
   ``stride > crop`` is refused (:func:`~phreg_bench.geometry.check_window_settings`): it leaves pixels no
   window covers for some image sizes (mmseg asserts against it), whose 0/0 logits would be scored as class 0;
4. per window: L2-normalised patch features @ unit-norm text queries → cosine logits on the patch grid,
   bilinearly upsampled to the window size; windows are summed into the image and divided by the count
   map; the result is bilinearly resized to the original label size (whole-image mode upsamples the grid
   straight to the original size, as ``forward_feature(img, ori_shape)`` does);
5. ``softmax(logit_scale · logits)`` over queries, max over each class's queries, optional SCLIP area
   rule, ``argmax``, then pixels whose max probability is below ``prob_thd`` become class 0 — decided
   without the ``[Q, H, W]`` softmax: an ``argmax`` of the class-max logits and one log-sum-exp pass
   (:func:`classify`).

Cost on the CPU: the per-image ``[Q, H, W]`` tensors are written into reused buffers (a fresh allocation
that size is new pages each time, whose faults cost as much as the interpolation), and the log-sum-exp runs
over cache-sized bands of rows; ``benchmarks/ovseg_harness.py`` measures the harness against a bare forward.

Resizing and the window layout are :mod:`phreg_bench.geometry`'s (one module for the harness and the probes).

Window sizes that are not a multiple of the patch size (images smaller than the crop, whole-image mode):
``window_pad="none"`` drops the trailing pixels as CLIP's strided patch convolution does (NACLIP, SCLIP,
PH-Reg) and still upsamples to the full window; ``"center"`` zero-pads the normalised window to a multiple
of the patch size and crops the upsampled logits back (ClearCLIP's ``compute_padsize``). Whole-image mode
always uses ``"none"``, as every reference ``forward_feature`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from phreg_bench.geometry import check_window_settings, pad_size, rescale_size, resize_image, window_boxes
from phreg_bench.methods.base import DenseModel
from phreg_bench.metrics.segmentation import count_values
from phreg_bench.protocol_settings import Settings, require
from phreg_bench.tasks.ovseg.text import ClassQueries
from phreg_core.errors import ConfigError

WINDOW_PADS = ("none", "center")


@dataclass(frozen=True)
class HarnessSettings(Settings):
    """The numbers a protocol preset fixes for the harness (see ``tasks/ovseg/*.yaml``), with the one set of
    range checks (the ovseg family's protocol settings extend this class)."""

    resize: int  # short side after resizing; 0 keeps the image size
    crop: int  # sliding-window size; 0 = whole image
    stride: int
    logit_scale: float
    prob_thd: float = 0.0
    area_thd: float | None = None  # SCLIP's small-segment rule (SCLIP VOC21 config: 0.1)
    max_long: int = 2048  # mmseg Resize scale=(2048, short)
    window_pad: Literal["none", "center"] = "none"

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> HarnessSettings:
        """The harness part of resolved protocol ``settings`` (other keys ignored), converted and checked;
        raises :class:`~phreg_bench.protocol_settings.ProtocolError` naming the key."""
        names = {f.name for f in fields(HarnessSettings)}
        return HarnessSettings.from_dict({key: settings[key] for key in names if key in settings},
                                         where="harness settings")

    def harness(self) -> HarnessSettings:
        """Only the harness numbers (a subclass's extra settings dropped)."""
        return HarnessSettings(**{f.name: getattr(self, f.name) for f in fields(HarnessSettings)})

    def validate(self) -> None:
        require("resize", self.resize >= 0, f"must be >= 0, got {self.resize}")
        require("crop", self.crop >= 0, f"must be >= 0 (0: whole image), got {self.crop}")
        require("stride", self.crop == 0 or self.stride > 0, f"must be > 0 when crop > 0, got {self.stride}")
        if self.crop > 0:
            check_window_settings(self.crop, self.stride)  # every pixel covered by a window
        require("logit_scale", self.logit_scale > 0, f"must be > 0, got {self.logit_scale}")
        require("prob_thd", 0.0 <= self.prob_thd <= 1.0, f"must be in [0, 1], got {self.prob_thd}")
        require("area_thd", self.area_thd is None or 0.0 <= self.area_thd <= 1.0,
                f"must be null or in [0, 1], got {self.area_thd}")
        require("max_long", self.max_long > 0, f"must be > 0, got {self.max_long}")
        require("window_pad", self.window_pad in WINDOW_PADS, f"must be one of {WINDOW_PADS}, got {self.window_pad!r}")


# Rows of the [Q, rows, W] temporary per step of the log-sum-exp (CPU): about 1 MiB, so it stays in cache.
_LSE_BAND_BYTES = 1 << 20


def _sum_exp(logits: Tensor, top: Tensor, scale: float) -> Tensor:
    """``[H, W]``: ``Σ_q exp(scale · (logits[q] − top))``, the softmax denominator relative to the max.

    On the CPU the sum runs over bands of rows, so the ``[Q, rows, W]`` temporary stays in cache and no
    ``[Q, H, W]`` tensor is allocated (allocations that size are fresh pages each time: page faults).
    """
    num_queries, height, width = logits.shape
    if logits.device.type != "cpu":
        return torch.exp((logits - top).mul_(scale)).sum(0)
    rows = max(1, _LSE_BAND_BYTES // max(1, 4 * num_queries * width))
    out = torch.empty_like(top)
    for start in range(0, height, rows):
        band = logits[:, start : start + rows] - top[start : start + rows]
        torch.sum(band.mul_(scale).exp_(), 0, out=out[start : start + rows])
    return out


def classify(logits: Tensor, queries: ClassQueries, settings: HarnessSettings,
             class_logits: Tensor | None = None) -> Tensor:
    """Class map ``[H, W]`` (int64) from cosine logits ``[Q, H, W]`` (reference §2.1 post-processing).

    The reference (NACLIP / PH-Reg ``postprocess_result``, SCLIP ``clip_segmentor.py``) takes
    ``p = softmax(logit_scale · logits)`` over queries, the max of ``p`` over each class's queries, the
    SCLIP area rule, ``argmax``, and sets pixels whose top probability is below ``prob_thd`` to class 0.
    Softmax is monotone, so the same decisions follow from the logits directly:

    * the winning class is the ``argmax`` of the class-max logits ``class_logits`` (first index on ties);
    * the winner's probability is ``exp(s·(top_c − top)) / Σ_q exp(s·(x_q − top))`` with ``top`` the max
      over all queries: one log-sum-exp pass, only when ``prob_thd > 0`` or the area rule is on;
    * the area rule zeroes the probabilities of small classes; their pixels go to the best remaining
      class, and to class 0 when every remaining probability underflows to 0 (the reference's ``argmax``
      of an all-zero column).

    Decisions equal the reference's except where they hinge on float32 rounding (two classes' probabilities
    within an ulp, or the top probability within an ulp of ``prob_thd``), where the reference itself is not
    reproducible: torch's softmax rounds differently with other thread counts or tensor layouts.
    ``class_logits`` (``queries.synonym_plan(logits)``) may be passed when the caller already has it.
    """
    logits = logits.float()
    if class_logits is None:
        class_logits = queries.synonym_plan(logits)
    top_class, pred = class_logits.max(0)
    area_rule = settings.area_thd is not None
    if not area_rule and settings.prob_thd <= 0:
        return pred
    top = top_class  # the max over all queries
    if area_rule:
        # SCLIP clip_segmentor.py: non-background classes predicted on <= area_thd of the non-background
        # predicted area get their probabilities zeroed (the area counts the argmax before the threshold).
        area = count_values(pred, queries.num_classes)[1:].float()
        keep = torch.cat([area.new_ones(1, dtype=torch.bool), area > settings.area_thd * area.sum()])
        masked = class_logits.masked_fill(~keep.view(-1, *([1] * (class_logits.ndim - 1))), float("-inf"))
        top_class, pred = masked.max(0)
    denominator = _sum_exp(logits, top, settings.logit_scale)
    prob = torch.exp((top_class - top) * settings.logit_scale) / denominator
    zero = torch.zeros_like(pred)
    if area_rule:
        pred = torch.where(prob == 0, zero, pred)  # an all-zero column: argmax is class 0
    if settings.prob_thd > 0:  # torch.where, not a boolean-mask assignment: no GPU sync
        pred = torch.where(prob < settings.prob_thd, zero, pred)
    return pred


def upsample(grid: Tensor, size: tuple[int, int], out: Tensor | None = None) -> Tensor:
    """Bilinear resize (half-pixel centres, no antialiasing) of ``[N, C, h, w]`` to ``size``.

    ``F.interpolate``'s kernel; with ``out`` (``[N, C, *size]``) it writes there instead of allocating:
    on the CPU a fresh ``[Q, H, W]`` allocation is new pages every time (page faults cost as much as the
    interpolation itself).
    """
    if out is None:
        return F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return torch.ops.aten.upsample_bilinear2d.out(grid, list(size), False, None, None, out=out)


class ScratchBuffers:
    """Named float32 buffers reused from image to image (one flat allocation per name, grown as needed)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._flat: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """An uninitialised ``shape`` view of buffer ``name``; overwritten by the next ``get`` of that name."""
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None or flat.numel() < numel:
            flat = self._flat[name] = torch.empty(numel, device=self.device)
        return flat[:numel].view(shape)


class OVSegPredictor:
    """Dense cosine logits of one image at its original size, for a method's :class:`DenseModel`.

    ``model`` gives projected patch tokens (``forward_tokens(..., project=True)``, width ``D``) at its own
    precision; ``queries`` holds the unit-norm text queries ``[Q, D]``
    (:func:`~phreg_bench.tasks.ovseg.text.class_queries` on ``model.encode_text``). ``batch_size`` windows go
    through the model at once, on ``device`` (where ``model`` already is). Everything after the model's
    forward runs in float32.
    """

    def __init__(self, model: DenseModel, queries: ClassQueries, settings: HarnessSettings, *, batch_size: int = 8,
                 device: torch.device | str = "cpu"):
        self.model = model
        self.queries = queries
        self.settings = settings
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        self.patch = int(model.patch_size)
        self.text = queries.embeddings.to(self.device, torch.float32)
        self._scratch = ScratchBuffers(self.device)

    def prepare(self, image: np.ndarray | Tensor) -> Tensor:
        """``uint8 [H, W, 3]`` → resized, normalised ``[1, 3, h, w]`` float on the device."""
        tensor = torch.as_tensor(image).to(self.device, non_blocking=True).permute(2, 0, 1)[None].float()
        if self.settings.resize > 0:
            size = rescale_size(tensor.shape[-2], tensor.shape[-1], self.settings.resize, self.settings.max_long)
            tensor = resize_image(tensor, size)
        return self.model.normalize(tensor / 255.0)

    def grid_logits(self, windows: Tensor) -> Tensor:
        """``[n, Q, h/p, w/p]`` cosine logits of normalised windows ``[n, 3, h, w]`` whose sides are multiples of
        the patch size ``p``: L2-normalised projected patch tokens (float32) times the unit-norm queries."""
        feats = F.normalize(self.model.forward_tokens(windows, project=True)[0].patches, dim=1)
        return torch.einsum("ndhw,qd->nqhw", feats, self.text).contiguous()

    def _trim(self, windows: Tensor) -> Tensor:
        height, width = windows.shape[-2:]
        rows, cols = height // self.patch, width // self.patch
        if rows == 0 or cols == 0:
            raise ConfigError(f"window {height}x{width} is smaller than the patch size {self.patch}")
        return windows[..., : rows * self.patch, : cols * self.patch]

    @torch.inference_mode()
    def dense_logits(self, image: np.ndarray | Tensor, out_size: tuple[int, int] | None = None) -> Tensor:
        """Cosine logits ``[Q, H0, W0]`` at ``out_size`` (default: the input image's size)."""
        return self._dense_logits(image, out_size, scratch=False)

    def _dense_logits(self, image: np.ndarray | Tensor, out_size: tuple[int, int] | None, *,
                      scratch: bool) -> Tensor:
        """:meth:`dense_logits`; with ``scratch`` the result lives in a reused buffer (valid until the next call)."""
        out_size = tuple(out_size or image.shape[:2])
        inputs = self.prepare(image)
        if self.settings.crop <= 0:
            grid = self.grid_logits(self._trim(inputs))
            out = self._scratch.get("logits", (1, grid.shape[1], *out_size)) if scratch else None
            return upsample(grid, out_size, out)[0]
        return self._slide(inputs, out_size, scratch)

    def _slide(self, inputs: Tensor, out_size: tuple[int, int], scratch: bool) -> Tensor:
        crop, stride = self.settings.crop, self.settings.stride
        height, width = inputs.shape[-2:]
        boxes = window_boxes(height, width, crop, stride)
        num_queries = self.text.shape[0]
        same_size = tuple(out_size) == (height, width)  # bilinear resizing to the same size is the identity
        if scratch or not same_size:
            summed = self._scratch.get("summed", (num_queries, height, width)).zero_()
        else:
            summed = torch.zeros(num_queries, height, width, device=self.device)
        count = self._scratch.get("count", (1, height, width)).zero_()
        win_h, win_w = boxes[0][1] - boxes[0][0], boxes[0][3] - boxes[0][2]
        pad = pad_size(win_h, win_w, self.patch) if self.settings.window_pad == "center" else (0, 0, 0, 0)
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start : start + self.batch_size]
            windows = torch.cat([inputs[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk])
            if any(pad):
                windows = self._trim(F.pad(windows, pad))
                size = tuple(windows.shape[-2:])
            else:
                windows, size = self._trim(windows), (win_h, win_w)
            grids = self.grid_logits(windows)
            for (y1, y2, x1, x2), grid in zip(chunk, grids, strict=True):
                up = upsample(grid[None], size, self._scratch.get("window", (1, num_queries, *size)))[0]
                if any(pad):
                    up = up[:, pad[2] : pad[2] + win_h, pad[0] : pad[0] + win_w]
                summed[:, y1:y2, x1:x2] += up
                count[:, y1:y2, x1:x2] += 1
        logits = summed.div_(count)
        if same_size:
            return logits
        out = self._scratch.get("logits", (1, num_queries, *out_size)) if scratch else None
        return upsample(logits[None], out_size, out)[0]

    def predict(self, image: np.ndarray | Tensor, out_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``(class map [H0, W0], cosine logits [Q, H0, W0])``."""
        logits = self.dense_logits(image, out_size)
        with torch.inference_mode():
            return classify(logits, self.queries, self.settings), logits

    def predict_classes(self, image: np.ndarray | Tensor,
                        out_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``(class map [H0, W0], class logits [C, H0, W0])``.

        The class logits are the max over each class's queries of the cosine logits: what
        :func:`classify` decides from and what the Pearson metric reads, computed once for both. The
        ``[Q, H0, W0]`` logits live in a buffer reused from call to call, and so do the class logits when
        every class has one query: read them before the next call.
        """
        with torch.inference_mode():
            logits = self._dense_logits(image, out_size, scratch=True)
            class_logits = self.queries.synonym_plan(logits)
            return classify(logits, self.queries, self.settings, class_logits), class_logits
