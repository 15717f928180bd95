"""Token-level wrappers (:class:`~phreg_core.vit.TokenViT`) for timm and open_clip vision transformers.

Both wrappers only read the wrapped model's modules; they never copy or re-initialise weights, so a
state dict loaded into the model is what the wrapper runs. Neither timm nor open_clip is imported here:
the wrappers work on the module attributes the two libraries define.

Other input grids resample the position table with the wrapper's ``pos_resample`` policy
(:mod:`phreg_core.pos_embed`). The default is each library's own convention — timm's
``resample_abs_pos_embed`` (antialiased bicubic, its ``dynamic_img_size`` forward) and open_clip's
``resize_pos_embed`` (the same call) — so a wrapper equals the library model at every size; the backbone
catalogue picks the policy of the reference code of each family instead (e.g. the OVSS repos' offset call
for CLIP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phreg_core.errors import UnsupportedModelError
from phreg_core.pos_embed import PosResample, get_policy
from phreg_core.vit import BlockParts, TokenLayout, TokenViT

# timm layers/pos_embed.py resample_abs_pos_embed (antialias=True) and open_clip model.py resize_pos_embed
LIBRARY_POLICY = "bicubic-antialias"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing (open_clip OPENAI_DATASET_MEAN)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class TimmTokenViT(TokenViT):
    """Token-level wrapper of ``timm.models.vision_transformer.VisionTransformer`` (DINOv2, DeiT, AugReg, ...)."""

    register_placement = "prefix"
    pos_embed_path = "model.pos_embed"  # dotted paths from the wrapper (phreg_core.student.embedding_paths)
    patch_embed_path = "model.patch_embed.proj"

    def __init__(self, model: nn.Module, pos_resample: str | PosResample = LIBRARY_POLICY):
        super().__init__()
        self.pos_resample = get_policy(pos_resample)
        unsupported = [
            name
            for name in ("rope", "attn_pool")
            if getattr(model, name, None) is not None and not isinstance(getattr(model, name), nn.Identity)
        ]
        if unsupported or getattr(model, "pos_embed", None) is None:
            raise UnsupportedModelError(f"timm model {type(model).__name__} has no absolute positional embedding "
                            f"or uses {unsupported}: not a plain ViT this wrapper supports")
        self.model = model
        self.blocks = model.blocks
        self.patch_size = _pair(model.patch_embed.patch_size)[0]
        self.embed_dim = model.embed_dim
        self.num_heads = model.blocks[0].attn.num_heads
        self.native_grid = _pair(model.patch_embed.grid_size)
        self.num_prefix_tokens = model.num_prefix_tokens
        self.num_builtin_registers = getattr(model, "num_reg_tokens", 0)
        self.has_class_token = model.cls_token is not None
        self.output_dim = model.embed_dim
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", self.mean))
        self.std = tuple(cfg.get("std", self.std))
        self.interpolation = cfg.get("interpolation", self.interpolation)

    def embed(self, images: Tensor) -> tuple[Tensor, TokenLayout]:
        model = self.model
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        patch_embed = model.patch_embed
        x = patch_embed.proj(images)
        x = x.flatten(2).transpose(1, 2)
        x = patch_embed.norm(x)
        prefix_in_pos = 0 if model.no_embed_class else self.num_prefix_tokens
        pos = model.pos_embed
        pos_prefix, pos_patches = pos[:, :prefix_in_pos], pos[:, prefix_in_pos:]
        pos_patches = self.resample_pos(pos_patches, grid)
        prefix = []
        if model.cls_token is not None:
            prefix.append(model.cls_token.expand(x.shape[0], -1, -1))
        if model.reg_token is not None:
            prefix.append(model.reg_token.expand(x.shape[0], -1, -1))
        if model.no_embed_class:
            x = x + pos_patches
            x = torch.cat(prefix + [x], dim=1) if prefix else x
        else:
            x = torch.cat(prefix + [x], dim=1) if prefix else x
            x = x + torch.cat([pos_prefix, pos_patches], dim=1)
        return x, TokenLayout(num_prefix=self.num_prefix_tokens, grid=grid)

    def norm_pre(self, tokens: Tensor) -> Tensor:
        return self.model.norm_pre(tokens)

    def block_parts(self, index: int) -> BlockParts:
        block = self.blocks[index]
        attn = block.attn
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError("gated timm attention is not supported for last-block surgery")

        def qkv(x: Tensor):
            batch, length, _ = x.shape
            packed = attn.qkv(x).reshape(batch, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = packed.unbind(0)
            return attn.q_norm(q), attn.k_norm(k), v

        return BlockParts(
            norm1=block.norm1,
            qkv=qkv,
            out_proj=lambda x: attn.proj(attn.norm(x)),
            norm2=block.norm2,
            mlp=block.mlp,
            num_heads=attn.num_heads,
            ls1=block.ls1,
            ls2=block.ls2,
        )

    def final_norm(self, tokens: Tensor) -> Tensor:
        return self.model.norm(tokens)


class OpenClipTokenViT(TokenViT):
    """Token-level wrapper of open_clip's ``VisionTransformer`` (OpenAI CLIP, LAION, DFN, MetaCLIP towers)."""

    register_placement = "append"  # PH-Reg's CLIP student: [CLS, patches, registers]
    pos_embed_path = "visual.positional_embedding"  # dotted paths from the wrapper (student.embedding_paths)
    patch_embed_path = "visual.conv1"

    def __init__(self, visual: nn.Module, pos_resample: str | PosResample = LIBRARY_POLICY):
        super().__init__()
        self.pos_resample = get_policy(pos_resample)
        if getattr(visual, "attn_pool", None) is not None:
            raise UnsupportedModelError("open_clip towers with attentional pooling are not plain ViTs")
        self.visual = visual
        self.blocks = visual.transformer.resblocks
        self.patch_size = _pair(visual.patch_size)[0]
        self.embed_dim = visual.conv1.out_channels
        self.num_heads = self.blocks[0].attn.num_heads
        self.native_grid = _pair(visual.grid_size)
        self.num_prefix_tokens = 1
        self.has_class_token = True
        self.output_dim = visual.proj.shape[1] if visual.proj is not None else self.embed_dim
        self.mean = tuple(float(v) for v in getattr(visual, "image_mean", None) or CLIP_MEAN)
        self.std = tuple(float(v) for v in getattr(visual, "image_std", None) or CLIP_STD)
        self.interpolation = (getattr(visual, "preprocess_cfg", None) or {}).get("interpolation", self.interpolation)

    def embed(self, images: Tensor) -> tuple[Tensor, TokenLayout]:
        visual = self.visual
        grid = self.grid_for(images.shape[-2], images.shape[-1])
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        pos = visual.positional_embedding
        # resample the stored table, then cast (NACLIP: `x + self.interpolate_pos_encoding(x, w, h).to(x.dtype)`)
        pos_patches = self.resample_pos(pos[1:].unsqueeze(0), grid).to(x.dtype)
        cls = (visual.class_embedding + pos[0].to(x.dtype)).to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x + pos_patches], dim=1)
        return x, TokenLayout(num_prefix=1, grid=grid)

    def norm_pre(self, tokens: Tensor) -> Tensor:
        return self.visual.ln_pre(tokens)

    def block_parts(self, index: int) -> BlockParts:
        block = self.blocks[index]
        attn = block.attn
        if not isinstance(attn, nn.MultiheadAttention):
            raise UnsupportedModelError(f"block {index} uses {type(attn).__name__}; expected nn.MultiheadAttention")
        heads = attn.num_heads

        def qkv(x: Tensor):
            batch, length, width = x.shape
            packed = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = packed.reshape(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v

        return BlockParts(
            norm1=block.ln_1,
            qkv=qkv,
            out_proj=attn.out_proj,
            norm2=block.ln_2,
            mlp=block.mlp,
            num_heads=heads,
            ls1=block.ls_1,
            ls2=block.ls_2,
        )

    def final_norm(self, tokens: Tensor) -> Tensor:
        return self.visual.ln_post(tokens)

    def project(self, tokens: Tensor) -> Tensor:
        return tokens @ self.visual.proj if self.visual.proj is not None else tokens
