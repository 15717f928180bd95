"""Any input size, non-square included: the backbone equals the reference model run at that size, with the
positional embeddings resampled the way the family's reference code does (timm ViTs: timm's own
``dynamic_img_size`` forward; CLIP: the OVSS repos' ``interpolate_pos_encoding``; see
``tests/test_pos_resample.py`` for every policy at the protocols' sizes). Prefix tokens (CLS, registers)
stay apart from the patches at every size.

(Until issue 10 this file encoded phreg-bench's old ``F.interpolate(size=...)`` call, which is none of the
references' calls.)"""

from __future__ import annotations

import copy

import pytest
import torch
from test_pos_resample import naclip_positional_term

from phreg_bench.registries import BACKBONES

TOL = 1e-5


@pytest.mark.parametrize("name", ["dinov2-vit-s14-reg4", "deit-vit-s16", "deit3-vit-s16"])
@pytest.mark.parametrize("grid", [(3, 6), (6, 5), (4, 4)])
def test_timm_any_size_equals_timms_own_dynamic_forward(name, grid):
    backbone = BACKBONES.get(name)(None, random_init=True, reduced=True)
    assert backbone.pos_resample == "bicubic-antialias"  # timm's resample_abs_pos_embed
    model = backbone.vision.model
    patch = backbone.patch_size
    size = (grid[0] * patch, grid[1] * patch)
    images = torch.randn(2, 3, *size)
    expected = model.forward_features(images)  # the same module, dynamic_img_size=True
    out = backbone.forward_tokens(images)[0]
    prefix = model.num_prefix_tokens
    assert out.grid == grid and out.prefix.shape[1] == prefix == 1 + backbone.num_registers
    torch.testing.assert_close(out.prefix, expected[:, :prefix], atol=TOL, rtol=0)
    torch.testing.assert_close(out.patches.flatten(2).transpose(1, 2), expected[:, prefix:], atol=TOL, rtol=0)


@pytest.mark.parametrize("grid", [(3, 6), (6, 5)])
def test_open_clip_any_size_equals_the_ovss_resampled_tower(grid):
    backbone = BACKBONES.get("openai-clip-vit-b16")(None, random_init=True, reduced=True)
    assert backbone.pos_resample == "bicubic-offset"  # NACLIP/SCLIP/ClearCLIP interpolate_pos_encoding
    visual = copy.deepcopy(backbone.vision.visual)
    images = torch.randn(2, 3, grid[0] * 16, grid[1] * 16)
    tokens = torch.zeros(1, 1 + grid[0] * grid[1], visual.positional_embedding.shape[-1])
    with torch.no_grad():
        visual.positional_embedding = torch.nn.Parameter(
            naclip_positional_term(visual.positional_embedding, 16, images, tokens).clone())
    visual.output_tokens = True
    pooled, tokens = visual(images)
    out = backbone.forward_tokens(images, project=True)[0]
    assert out.patches.shape == (2, backbone.output_dim, *grid)
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
