"""Tiny random models and data shared by the phreg_core tests (no tests here)."""

from __future__ import annotations

import pytest
import torch

from phreg_core.towers import OpenClipTokenViT, TimmTokenViT


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; 2 threads on shared cores are up to 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_timm(seed: int = 0, img_size: int = 32, patch: int = 8, width: int = 32, depth: int = 3,
              reg_tokens: int = 0) -> TimmTokenViT:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img_size, patch_size=patch, embed_dim=width, depth=depth, num_heads=4,
                              num_classes=0, reg_tokens=reg_tokens, dynamic_img_size=True)
    return TimmTokenViT(model.eval())


def tiny_clip(seed: int = 0, img_size: int = 32, patch: int = 8, width: int = 32, depth: int = 3,
              output_dim: int = 16) -> OpenClipTokenViT:
    from open_clip.transformer import VisionTransformer

    torch.manual_seed(seed)
    visual = VisionTransformer(image_size=img_size, patch_size=patch, width=width, layers=depth, heads=4,
                               mlp_ratio=4.0, output_dim=output_dim)
    return OpenClipTokenViT(visual.eval())


def random_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, size, size, generator=generator)
