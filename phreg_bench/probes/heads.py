"""Probe heads trained on frozen dense features.

* :class:`LinearSegHead` — the DINOv2 / PH-Reg ``BNHead`` for segmentation: BatchNorm over the patch
  features, then a 1x1 convolution to the classes (mmseg ``cls_seg``, dropout 0). Source:
  ``0raiser0/PH-Reg:DINOv2_full/evaluation/segmentation/fine-tune/seg_models/decode_head/head.py``.
* :class:`BinsDepthHead` — the DINOv2 / DVT linear depth head ``BNHead(classify=True, n_bins=256,
  bins_strategy='UD', norm_strategy='linear', upsample=4)``: patch features concatenated with the CLS token,
  bilinear x4 upsampling, a 1x1 convolution to 256 bin logits, AdaBins "linear" normalisation and the
  expectation over uniformly spaced bin centres. Source: ``facebookresearch/dinov2:dinov2/eval/depth/
  models/decode_heads/{linear_head,decode_head}.py`` and PH-Reg's copy; in that ``BNHead`` the BatchNorm line
  is commented out (``# self.bn = nn.SyncBatchNorm(...)``) and the config sets ``norm_cfg=None``, so by
  default the depth head has no normalisation layer (``batchnorm=True`` adds one, off-protocol).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phreg_core.errors import ConfigError


class LinearSegHead(nn.Module):
    """BatchNorm + 1x1 conv over ``[B, C, h, w]`` features; logits stay at feature resolution."""

    def __init__(self, in_channels: int, num_classes: int, *, batchnorm: bool = True):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels) if batchnorm else nn.Identity()
        self.conv_seg = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        # mmseg BaseDecodeHead init_cfg: Normal(std=0.01) on conv_seg, bias 0
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv_seg(self.bn(features))


class BinsDepthHead(nn.Module):
    """Classification-style depth: softly weighted uniform bins in ``[min_depth, max_depth]``.

    Inputs are patch features ``[B, C, h, w]`` and the CLS token ``[B, C]`` (the head sees ``2C`` channels:
    patches then CLS, as the reference concatenates them). Output: depth ``[B, 1, upsample*h, upsample*w]``.

    The reference upsamples the ``2C``-channel features and then applies the 1x1 convolution. Bilinear
    resampling and a 1x1 convolution are both linear (and bilinear weights sum to one, so the bias passes
    through), hence they commute: this head convolves first and upsamples the ``n_bins`` logits, which is the
    same function at a fraction of the memory.
    """

    def __init__(self, in_channels: int, *, n_bins: int = 256, min_depth: float = 1e-3, max_depth: float = 10.0,
                 bins_strategy: str = "UD", norm_strategy: str = "linear", upsample: int = 4,
                 batchnorm: bool = False, align_corners: bool = False):
        super().__init__()
        if bins_strategy != "UD":
            raise ConfigError(f"bins_strategy {bins_strategy!r} is not supported; the protocol uses 'UD'")
        if norm_strategy not in ("linear", "softmax", "sigmoid"):
            raise ConfigError(f"norm_strategy must be linear, softmax or sigmoid, got {norm_strategy!r}")
        self.channels = 2 * in_channels
        self.bn = nn.BatchNorm2d(self.channels) if batchnorm else None
        self.conv_depth = nn.Conv2d(self.channels, n_bins, kernel_size=1)  # PyTorch default init, as mmcv
        self.norm_strategy = norm_strategy
        self.upsample = upsample
        self.align_corners = align_corners
        self.min_depth, self.max_depth = min_depth, max_depth
        # bins = torch.linspace(min_depth, max_depth, n_bins) ('UD') [reference decode_head.depth_pred]
        self.register_buffer("bins", torch.linspace(min_depth, max_depth, n_bins), persistent=False)

    def logits(self, patches: Tensor, cls: Tensor) -> Tensor:
        """Bin logits at feature resolution ``[B, n_bins, h, w]``."""
        cls_map = cls[:, :, None, None].expand(-1, -1, *patches.shape[-2:])
        features = torch.cat([patches, cls_map], dim=1)
        if self.bn is not None:
            features = self.bn(features)
        return self.conv_depth(features)

    def forward(self, patches: Tensor, cls: Tensor) -> Tensor:
        logit = self.logits(patches, cls)
        if self.upsample != 1:
            size = [s * self.upsample for s in logit.shape[-2:]]
            logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=self.align_corners)
        if self.norm_strategy == "linear":  # AdaBins: relu, + 0.1, normalise [reference depth_pred]
            prob = torch.relu(logit) + 0.1
            prob = prob / prob.sum(dim=1, keepdim=True)
        elif self.norm_strategy == "softmax":
            prob = torch.softmax(logit, dim=1)
        else:
            prob = torch.sigmoid(logit)
            prob = prob / prob.sum(dim=1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", prob, self.bins.to(prob.dtype)).unsqueeze(1)
