"""The built-in backbone: a 4-block ViT with seeded random weights, built offline in milliseconds."""

from __future__ import annotations

import torch

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_bench.backbones.weights import state_dict_sha256
from phreg_core.errors import ConfigError
from phreg_core.pos_embed import get_policy
from phreg_core.towers import TimmTokenViT

# Built-in models have no reference codebase; they keep the resampling phreg-bench always used for them.
BUILTIN_POLICY = "bicubic"


def build_tiny_vit(argument: str | None = None, *, name: str = "tiny-vit", weights: str | None = None,
                   random_init: bool = True, seed: int = 0, img_size: int = 64, pos_resample: str | None = None,
                   **options) -> Backbone:
    """A timm ``VisionTransformer`` (patch 8, width 64, depth 4, 4 heads) with weights drawn from ``seed``.

    ``pos_resample``: the positional-embedding resampling policy (default ``"bicubic"``, see
    :mod:`phreg_core.pos_embed`).
    """
    from timm.models.vision_transformer import VisionTransformer

    if options:
        raise ConfigError(f"tiny-vit takes no options {sorted(options)}")
    policy = get_policy(pos_resample or BUILTIN_POLICY)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = VisionTransformer(img_size=img_size, patch_size=8, embed_dim=64, depth=4, num_heads=4,
                                  num_classes=0, dynamic_img_size=True)
    weights_id = f"random-init(seed={seed})"
    if weights:
        from phreg_bench.backbones.weights import load_into

        load_into(model, weights)
        weights_id = weights
    model.eval()
    identity = BackboneIdentity(name=name, family="builtin", architecture="vit(p8,w64,d4,h4)",
                                weights_id=weights_id, weights_sha256=state_dict_sha256(model))
    return Backbone(TimmTokenViT(model, policy), identity)
