"""The contract: :class:`phreg_core.vit.TokenViT` over :class:`ExampleViT`.

Four steps are enough: ``embed`` (patches + positional embeddings resampled to the input's grid + CLS),
``norm_pre``, ``block_parts`` (for last-block methods such as MaskCLIP / NACLIP) and ``final_norm``.
``forward_tokens`` — patch grid ``[B, C, h, w]`` and prefix tokens kept apart — comes from the base class.

Every TokenViT also names how its positional embeddings are resampled to other grids: ``pos_resample``, a
policy of :mod:`phreg_core.pos_embed` (``"bicubic"``, ``"bicubic-antialias"`` or ``"bicubic-offset"``). Pick
the call your model's own code uses at other sizes; ``ExampleViT`` only runs at its native size, so this
example uses plain bicubic by size. The policy is recorded in every result.
"""

from __future__ import annotations

import torch
from torch import Tensor

from phreg_core.pos_embed import PosResample, get_policy
from phreg_core.vit import BlockParts, TokenLayout, TokenViT
from phreg_example_backbone.model import ExampleViT


class ExampleTokenViT(TokenViT):
    mean = (0.5, 0.5, 0.5)  # the normalisation the weights expect
    std = (0.5, 0.5, 0.5)

    def __init__(self, model: ExampleViT, pos_resample: str | PosResample = "bicubic"):
        super().__init__()
        self.pos_resample = get_policy(pos_resample)  # how `embed` resamples the table to other grids
        self.model = model
        self.blocks = model.blocks  # the model's own ModuleList: blocks run unchanged
        self.patch_size = model.patch
        self.embed_dim = model.cls_token.shape[-1]
        self.num_heads = model.blocks[0].attn.heads
        self.native_grid = (model.grid, model.grid)
        self.num_prefix_tokens = 1  # CLS only; no built-in registers
        self.output_dim = self.embed_dim

    def embed(self, images: Tensor) -> tuple[Tensor, TokenLayout]:
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        x = self.model.patch_embed(images).flatten(2).transpose(1, 2)
        pos = self.model.pos_embed
        x = x + self.resample_pos(pos[:, 1:], grid)
        cls = (self.model.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1), TokenLayout(num_prefix=1, grid=grid)

    def norm_pre(self, tokens: Tensor) -> Tensor:
        return tokens

    def block_parts(self, index: int) -> BlockParts:
        block = self.blocks[index]
        return BlockParts(norm1=block.norm1, qkv=block.attn.split, out_proj=block.attn.proj,
                          norm2=block.norm2, mlp=block.mlp, num_heads=block.attn.heads)

    def final_norm(self, tokens: Tensor) -> Tensor:
        return self.model.norm(tokens)
