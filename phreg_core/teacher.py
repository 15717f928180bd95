"""The frozen teacher: any callable ``images -> patch features [B, C, h, w]``.

Defaults (reference notes §1.2):

* CLIP family (the ViT has a projection): the NACLIP last block (k-k attention + Gaussian
  neighbourhood bias, σ = 5, no residual, no FFN), ``ln_post`` then ``proj`` — 512-d projected patch tokens
  (``0raiser0/PH-Reg:demo_tutorial.ipynb`` "Initialize NACLIP", ``CLIP/models/augNaCLIP/model.py``).
* any other ViT: the unmodified model's final normalised output (DINOv2: ``last_hidden_state`` patches,
  ``DINOv2_full/models/teacherDINOv2.py``).

Positional embeddings are resampled from the native grid for other input sizes (the CLIP teacher's
14×14 → 28×28 at 448 px) with the ViT's ``pos_resample`` policy; PH-Reg's NACLIP teacher uses the
offset-0.1 bicubic call (``CLIP/models/augNaCLIP/model.py`` ``interpolate_pos_encoding``), the catalogue's
default for CLIP. The policy is part of :meth:`TowerTeacher.describe` (and so of target-cache keys).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from phreg_core.last_block import PRESETS, LastBlockConfig
from phreg_core.vit import TokenViT

__all__ = ["TowerTeacher", "default_teacher", "is_clip_family"]


def is_clip_family(vit: TokenViT) -> bool:
    """CLIP-like towers are recognised by their projection into a joint image-text space."""
    return vit.has_projection


class TowerTeacher(nn.Module):
    """A frozen ViT run with an optional last-block variant; returns final normalised patch tokens."""

    def __init__(self, vit: TokenViT, last_block: LastBlockConfig | None = None, project: bool = False):
        super().__init__()
        self.vit = vit
        self.last_block = last_block
        self.project = project
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> TowerTeacher:  # the teacher is always in eval mode
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        out = self.vit.forward_tokens(images, last_block=self.last_block, project=self.project)[0]
        return out.patches

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "token-vit",
            "last_block": self.last_block.to_dict() if self.last_block is not None else None,
            "project": self.project,
            "pos_resample": self.vit.pos_resample.name if self.vit.pos_resample is not None else None,
        }


def default_teacher(vit: TokenViT) -> TowerTeacher:
    """PH-Reg's teacher for this tower: NACLIP + projection for CLIP, the plain model otherwise."""
    vit.eval()
    if is_clip_family(vit):
        return TowerTeacher(vit, PRESETS["naclip"], project=True)
    return TowerTeacher(vit, None, project=False)
