"""Method `tta`: test-time shift/flip denoising around an inner method."""

from __future__ import annotations

import pytest
import torch
from test_core_fixtures import one_thread, random_images  # noqa: F401

from phreg_bench.backbones.builtin import build_tiny_vit
from phreg_bench.methods.tta import build


def test_one_view_is_the_inner_method():
    backbone = build_tiny_vit(seed=0)
    model = build(backbone, views=1)
    images = random_images(2, 64)
    with torch.no_grad():
        got = model.forward_tokens(images, project=True)[0]
        want = backbone.forward_tokens(images, project=True)[0]
    assert torch.allclose(got.patches, want.patches, atol=1e-6)
    assert torch.equal(got.prefix, want.prefix)


def test_ten_views_average_and_record_their_config():
    backbone = build_tiny_vit(seed=0)
    model = build(backbone, views=10, seed=3)
    images = random_images(2, 64)
    with torch.no_grad():
        out = model.forward_tokens(images, project=False)[0]
        again = model.forward_tokens(images[1:], project=False)[0]
    assert out.patches.shape == (2, 64, 8, 8) and out.prefix.shape == (2, 1, 64)
    assert torch.allclose(out.patches[1:], again.patches, atol=1e-5)  # the same views for every image
    plain = backbone.forward_tokens(images)[0].patches
    assert not torch.allclose(out.patches, plain, atol=1e-3)
    assert model.method_config == {"views": 10, "shift_frac": 0.15, "seed": 3, "inner": {"name": "raw", "config": {}}}
    plan = model.plan((8, 8))
    assert tuple(plan.offsets[0]) == (0, 0) and not plan.flips[0] and len(plan.offsets) == 10


def test_inner_options_reach_the_inner_method():
    with pytest.raises(ValueError, match="method 'tta' has no option 'unexpected'.*inner method 'raw': no options"):
        build(build_tiny_vit(seed=0), inner="raw", unexpected=1)
    with pytest.raises(ValueError, match="itself"):
        build(build_tiny_vit(seed=0), inner="tta")


def test_every_layer_is_averaged_with_one_denoiser():
    backbone = build_tiny_vit(seed=0)
    model = build(backbone, views=1)
    denoiser = model.denoiser
    images = random_images(2, 64)
    with torch.no_grad():
        got = model.forward_tokens(images, layers=(0, -1))
        want = backbone.forward_tokens(images, (0, -1))
    assert model.denoiser is denoiser  # built once, not per forward
    for g, w in zip(got, want, strict=True):
        assert g.layer == w.layer
        assert torch.allclose(g.patches, w.patches, atol=1e-6) and torch.equal(g.prefix, w.prefix)
