"""The parameterised last transformer block behind MaskCLIP, SCLIP, ClearCLIP, NACLIP and PH-Reg.

The training-free open-vocabulary methods differ only in how the last block of CLIP's image tower is run
(reference notes §4):

==================  =================================  ==========  =====
preset              attention weights                  residual    FFN
==================  =================================  ==========  =====
vanilla             softmax(q kᵀ s)                    yes         yes
maskclip            identity (value path)              no          no
maskclip-official   identity (value path)              yes         yes
sclip               softmax(q qᵀ s) + softmax(k kᵀ s)  yes         yes
clearclip           softmax(q qᵀ s)                    no          no
naclip              softmax(k kᵀ s + Ω), σ = 5         no          no
==================  =================================  ==========  =====

with ``s = head_dim**-0.5`` and Ω the Gaussian neighbourhood bias over patch-grid distance (NACLIP,
WACV'25, Eq. 5–6), added to the logits and zero on every non-patch row and column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from phreg_core.errors import ConfigError
from phreg_core.vit import BlockParts, TokenLayout

ATTENTION_KINDS = ("vanilla", "identity", "qq", "kk", "qq+kk", "kk+gaussian")


@dataclass(frozen=True)
class LastBlockConfig:
    """How to run the last block. ``attention`` is one of :data:`ATTENTION_KINDS`."""

    attention: str = "vanilla"
    residual: bool = True
    ffn: bool = True
    gaussian_std: float = 5.0  # NACLIP's default σ (sinahmr/NACLIP `gaussian_std=5.0`)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ConfigError(f"unknown attention {self.attention!r}; choose from {', '.join(ATTENTION_KINDS)}")
        if self.ffn and not self.residual:
            raise ConfigError("an FFN without the attention residual is not a configuration any method uses")

    def to_dict(self) -> dict:
        return asdict(self)

    def __call__(self, parts: BlockParts, tokens: Tensor, layout: TokenLayout) -> Tensor:
        return run_last_block(self, parts, tokens, layout)


PRESETS: dict[str, LastBlockConfig] = {
    "vanilla": LastBlockConfig("vanilla", residual=True, ffn=True),
    # MaskCLIP as PH-Reg / ClearCLIP define it: out_proj(v), no residual, no FFN.
    "maskclip": LastBlockConfig("identity", residual=False, ffn=False),
    # MaskCLIP's ECCV'22 code: the value path keeps the residual and the FFN.
    "maskclip-official": LastBlockConfig("identity", residual=True, ffn=True),
    # SCLIP (ECCV'24) correlative self-attention: the two softmaxes are summed, not averaged.
    "sclip": LastBlockConfig("qq+kk", residual=True, ffn=True),
    # ClearCLIP (ECCV'24): q-q attention, residual and FFN removed.
    "clearclip": LastBlockConfig("qq", residual=False, ffn=False),
    # NACLIP (WACV'25): k-k attention plus a Gaussian neighbourhood bias, reduced block.
    "naclip": LastBlockConfig("kk+gaussian", residual=False, ffn=False),
}


def gaussian_neighbourhood_bias(layout: TokenLayout, std: float, device, dtype) -> Tensor:
    """Ω[(i,j),(k,l)] = exp(−((i−k)² + (j−l)²) / (2σ²)) between patches; 0 for any other token.

    NACLIP (WACV'25) Eq. 5: the bias is added to the attention logits before the softmax.
    """
    rows, cols = layout.grid
    yy, xx = torch.meshgrid(
        torch.arange(rows, device=device, dtype=torch.float32),
        torch.arange(cols, device=device, dtype=torch.float32),
        indexing="ij",
    )
    coords = torch.stack([yy.flatten(), xx.flatten()], dim=1)
    squared = torch.cdist(coords, coords).pow(2)
    patch_bias = torch.exp(-squared / (2 * std**2))
    total = layout.num_prefix + layout.num_patches + layout.num_appended
    bias = torch.zeros(total, total, device=device, dtype=torch.float32)
    bias[layout.patch_slice, layout.patch_slice] = patch_bias
    return bias.to(dtype)


def attention_output(config: LastBlockConfig, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
    """Mix values ``v`` ``[B, H, N, d]`` with the configured attention weights."""
    scale = q.shape[-1] ** -0.5
    kind = config.attention
    if kind == "identity":
        return v
    if kind == "vanilla":
        return F.scaled_dot_product_attention(q, k, v)
    if kind == "qq":
        return F.scaled_dot_product_attention(q, q, v)
    if kind == "kk":
        return F.scaled_dot_product_attention(k, k, v)
    if kind == "qq+kk":
        return F.scaled_dot_product_attention(q, q, v) + F.scaled_dot_product_attention(k, k, v)
    bias = gaussian_neighbourhood_bias(layout, config.gaussian_std, q.device, q.dtype)
    return F.scaled_dot_product_attention(k, k, v, attn_mask=bias, scale=scale)


def run_last_block(config: LastBlockConfig, parts: BlockParts, tokens: Tensor, layout: TokenLayout) -> Tensor:
    """Apply the configured last block to ``tokens`` ``[B, N, C]``."""
    q, k, v = parts.qkv(parts.norm1(tokens))
    mixed = attention_output(config, q, k, v, layout)
    batch, heads, length, head_dim = mixed.shape
    branch = parts.ls1(parts.out_proj(mixed.transpose(1, 2).reshape(batch, length, heads * head_dim)))
    if not config.residual:
        return branch
    tokens = tokens + branch
    if config.ffn:
        tokens = tokens + parts.ls2(parts.mlp(parts.norm2(tokens)))
    return tokens
