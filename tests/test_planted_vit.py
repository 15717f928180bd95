"""The planted-artifact ViT behaves like the artifacts described by Darcet et al. and Jiang et al."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from phreg_bench.backbones.build import build_backbone
from phreg_bench.synthetic.planted import PlantedSpec, RegisterNeurons, firing_maps
from phreg_bench.synthetic.scenes import FIRST_OBJECT, SKY, WALL, render
from phreg_core.diagnostics import outlier_rate

SPEC = PlantedSpec()
SIZE, PATCH = SPEC.img_size, SPEC.patch_size
GRID = SIZE // PATCH


@pytest.fixture(scope="module")
def models():
    return build_backbone("planted-vit"), build_backbone("planted-vit-twin")


def _images(backbone, indices, size=SIZE, offset=(0, 0)):
    scenes = [render(i, size + 2 * PATCH, 0) for i in indices]
    pixels = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    dy, dx = offset
    labels = torch.from_numpy(np.stack([s.labels for s in scenes]))[:, dy : dy + size, dx : dx + size]
    return backbone.normalize(pixels[..., dy : dy + size, dx : dx + size]), labels


def _fired(backbone, images):
    with torch.no_grad():
        out = backbone.forward_tokens(images)[0].patches
    firing = firing_maps(backbone.vision)[0]
    return out, firing[:, -GRID * GRID :].view(-1, GRID, GRID)


def test_catalogue_entries_and_twin_share_weights(models):
    from timm.models.vision_transformer import VisionTransformer

    planted, twin = models
    assert isinstance(planted.vision.model, VisionTransformer)
    assert planted.identity.weights_sha256 == twin.identity.weights_sha256
    assert planted.identity.extra["artifacts"] is True and twin.identity.extra["artifacts"] is False
    assert (planted.patch_size, planted.embed_dim, planted.depth) == (PATCH, 64, SPEC.depth)
    for name, value in planted.vision.model.state_dict().items():
        assert torch.equal(value, twin.vision.model.state_dict()[name]), name
    with pytest.raises(ValueError, match="no option"):
        build_backbone("planted-vit", colour=1)


def test_high_norm_tokens_on_low_information_patches_without_local_content(models):
    planted, twin = models
    images, labels = _images(planted, range(24))
    out, firing = _fired(planted, images)
    with torch.no_grad():
        clean = twin.forward_tokens(images)[0].patches
    fired = firing > 0.5
    assert 1.0 <= fired.sum(dim=(1, 2)).float().mean() <= 3.0  # a few tokens per image
    assert outlier_rate(out) > 0.01 and outlier_rate(clean) == 0.0
    norms = out.norm(dim=1)
    assert norms[fired].min() > 4 * norms.median()  # very high norm
    # they sit on low-information regions: the smooth sky and wall, or a plain object
    patch_label = F.interpolate(labels[:, None].float(), size=(GRID, GRID), mode="nearest")[:, 0].long()
    smooth = (patch_label == SKY) | (patch_label == WALL) | (patch_label >= FIRST_OBJECT)
    assert smooth[fired].float().mean() > 0.9
    assert ((patch_label[fired] == SKY) | (patch_label[fired] == WALL)).float().mean() > 0.7
    # they lost their local content; the other tokens kept theirs
    cos = F.cosine_similarity(out, clean, dim=1)
    assert cos[fired].max() < 0.3
    assert cos[~fired].mean() > 0.95


def test_other_tokens_attend_to_artifacts(models):
    planted, _ = models
    images, _ = _images(planted, range(8))
    layer = SPEC.artifact_layer + 1
    captured = {}
    hook = planted.vision.blocks[layer].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    try:
        _, firing = _fired(planted, images)
    finally:
        hook.remove()
    parts = planted.vision.block_parts(layer)
    with torch.no_grad():
        q, k, _ = parts.qkv(parts.norm1(captured["x"]))
        attention = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1).mean(1)  # [B, N, N]
    patches = attention[:, 1:, 1:]  # patch -> patch (token 0 is CLS)
    fired = (firing > 0.5).flatten(1)
    to_artifact = torch.stack([patches[b][~fired[b]][:, fired[b]].sum(-1).mean() / fired[b].sum()
                               for b in range(len(images)) if fired[b].any()])
    uniform = 1.0 / patches.shape[-1]
    assert to_artifact.mean() > 8 * uniform  # each artifact token draws many times its share of attention


def test_which_patches_fire_changes_under_shifts(models):
    planted, _ = models
    base, _ = _images(planted, range(24))
    _, fired = _fired(planted, base)
    fired = fired > 0.5
    whole, _ = _images(planted, range(24), offset=(0, PATCH))  # content moves one patch to the left
    _, moved = _fired(planted, whole)
    still = (fired[:, :, 1:] & (moved[:, :, :-1] > 0.5)).sum() / fired[:, :, 1:].sum()
    assert still < 0.2  # the same content is (almost) never hit again
    half, _ = _images(planted, range(24), offset=(PATCH // 2, PATCH // 2))
    _, shifted = _fired(planted, half)
    kept = (fired & (shifted > 0.5)).sum() / fired.sum()
    assert kept < 0.8  # a sub-patch shift moves a good part of them too


def test_tta_denoising_removes_the_artifacts(models):
    from phreg_core.teacher import default_teacher
    from phreg_core.tta import TTADenoiser, normalised_white, patch_teacher, plan_views

    planted, _ = models
    images, _ = _images(planted, range(100_000, 100_024))
    teacher = default_teacher(planted.vision)
    denoiser = TTADenoiser(PATCH, normalised_white(planted.vision.mean, planted.vision.std))
    plans = [plan_views(np.random.default_rng(i), (GRID, GRID)) for i in range(len(images))]
    with torch.no_grad():
        raw, target = teacher(images), denoiser(patch_teacher(teacher), images, plans)[0].patches
    assert outlier_rate(target) < 0.2 * outlier_rate(raw)


def test_a_winning_register_absorbs_every_firing_and_fresh_ones_do_not(models):
    from phreg_core.student import Student

    planted, _ = models
    images, _ = _images(planted, range(16))
    register = torch.zeros(1, SPEC.embed_dim)
    register[0, SPEC.channels()["position"]] = 2.0  # a test-time register: it out-scores every patch
    with torch.no_grad():
        out = planted.forward_tokens(images, registers=register)[0]
    firing = firing_maps(planted.vision)[0]  # [B, 1 + patches]: the register comes first (prefix placement)
    assert out.patches.shape == (16, SPEC.embed_dim, GRID, GRID) and out.prefix.shape[1] == 2
    assert firing[:, 0].min() > 0.99 and firing[:, 1:].max() < 0.05
    assert outlier_rate(out.patches) == 0.0
    fresh = Student(planted.vision, 16, seed=0).eval()
    with torch.no_grad():
        fresh(images)
    firing = firing_maps(fresh.vision)[0]
    assert firing[:, :16].sum() < 0.3 * firing.sum()  # untrained registers absorb little: they must learn


def test_the_token_seam_works(models):
    from phreg_core.last_block import PRESETS

    planted, twin = models
    images, _ = _images(planted, range(2))
    with torch.no_grad():
        outs = planted.forward_tokens(images, layers=(1, SPEC.artifact_layer, -1))
        naclip = planted.forward_tokens(images, last_block=PRESETS["naclip"])[0]
        larger = planted.forward_tokens(torch.cat([images, images], -1)[..., :SIZE + 2 * PATCH])[0]
    assert [o.layer for o in outs] == [1, SPEC.artifact_layer, SPEC.depth - 1]
    assert naclip.patches.shape == (2, SPEC.embed_dim, GRID, GRID)
    assert larger.grid == (GRID, GRID + 2)  # other sizes resample the positional embedding
    assert isinstance(planted.vision.blocks[SPEC.artifact_layer].register_neurons, RegisterNeurons)
    assert all(b.register_neurons is None for i, b in enumerate(twin.vision.blocks) if i != SPEC.artifact_layer)
