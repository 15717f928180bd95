"""Any input size, non-square included: the backbone equals the library model whose positional
embeddings were resampled bicubically (``F.interpolate``, align_corners=False, as NACLIP / PH-Reg do) to
the new grid. Prefix tokens (CLS, registers) stay apart from the patches at every size."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from phreg_bench.registries import BACKBONES

TOL = 1e-5


def _bicubic(pos: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """``[1, h*w, C]`` -> ``[1, H*W, C]``, written out independently of phreg_core."""
    grid = pos.reshape(1, src[0], src[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], -1)


@pytest.mark.parametrize("name", ["dinov2-vit-s14-reg4", "deit-vit-s16", "deit3-vit-s16"])
@pytest.mark.parametrize("grid", [(3, 6), (6, 5), (4, 4)])
def test_timm_any_size_equals_resampled_timm_model(name, grid):
    from phreg_bench.backbones import timm_backbones

    backbone = BACKBONES.get(name)(None, random_init=True, reduced=True)
    model = backbone.vision.model
    patch = backbone.info.patch_size
    size = (grid[0] * patch, grid[1] * patch)
    reference = timm_backbones.create_model(BACKBONES.entry(name).metadata["argument"],
                                            reduced=timm_backbones.REDUCED, img_size=size)
    state = model.state_dict()
    keep = 0 if model.no_embed_class else model.num_prefix_tokens  # prefix slots inside pos_embed
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :keep],
                                    _bicubic(state["pos_embed"][:, keep:], (4, 4), grid)], dim=1)
    reference.load_state_dict(state)

    images = torch.randn(2, 3, *size)
    expected = reference.forward_features(images)
    out = backbone.forward_tokens(images)[0]
    prefix = model.num_prefix_tokens
    assert out.grid == grid and out.prefix.shape[1] == prefix == 1 + backbone.info.num_registers
    torch.testing.assert_close(out.prefix, expected[:, :prefix], atol=TOL, rtol=0)
    torch.testing.assert_close(out.patches.flatten(2).transpose(1, 2), expected[:, prefix:], atol=TOL, rtol=0)


@pytest.mark.parametrize("grid", [(3, 6), (6, 5)])
def test_open_clip_any_size_equals_resampled_open_clip_tower(grid):
    backbone = BACKBONES.get("openai-clip-vit-b16")(None, random_init=True, reduced=True)
    visual = copy.deepcopy(backbone.vision.visual)
    pos = visual.positional_embedding.detach()
    with torch.no_grad():
        visual.positional_embedding = torch.nn.Parameter(
            torch.cat([pos[:1], _bicubic(pos[1:].unsqueeze(0), (4, 4), grid)[0]], dim=0))
    visual.output_tokens = True
    images = torch.randn(2, 3, grid[0] * 16, grid[1] * 16)
    pooled, tokens = visual(images)
    out = backbone.forward_tokens(images, project=True)[0]
    assert out.patches.shape == (2, backbone.info.output_dim, *grid)
    torch.testing.assert_close(out.patches.flatten(2).transpose(1, 2), tokens @ visual.proj, atol=TOL, rtol=0)
    torch.testing.assert_close(out.prefix[:, 0], pooled, atol=TOL, rtol=0)


def test_registers_stay_in_the_prefix_at_every_layer():
    backbone = BACKBONES.get("dinov2-vit-b14-reg4")(None, random_init=True, reduced=True)
    model = backbone.vision.model
    images = torch.randn(1, 3, 5 * 14, 3 * 14)
    outs = backbone.forward_tokens(images, layers=(0, 1), final_norm=False)
    tokens = model.patch_embed.proj(images)  # grid check independent of the adapter: 5x3 patches
    assert tokens.shape[-2:] == (5, 3)
    for out in outs:
        assert out.prefix.shape == (1, 5, 48) and out.patches.shape == (1, 48, 5, 3)
    # prefix slot 1 + i follows register token i: perturbing register 2 moves slot 3 far more than the rest
    with torch.no_grad():
        model.reg_token[0, 2] += 10.0
    moved = backbone.forward_tokens(images, layers=(0,), final_norm=False)[0]
    delta = (moved.prefix - outs[0].prefix).abs().amax(dim=-1)[0]
    assert delta[3] > 1.0  # prefix slot 3 = CLS + register index 2
    assert delta[3] > 10 * delta[[0, 1, 2, 4]].max()


def test_input_not_a_multiple_of_the_patch_size_is_refused():
    backbone = BACKBONES.get("deit-vit-s16")(None, random_init=True, reduced=True)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        backbone.forward_tokens(torch.randn(1, 3, 50, 64))
