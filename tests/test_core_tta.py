"""TTA denoising (PH-Reg Algorithm 1): view plans, shifts, coordinate maps, inverse mapping, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_core_fixtures import one_thread  # noqa: F401

from phreg_core.towers import CLIP_MEAN, CLIP_STD
from phreg_core.tta import (
    TTADenoiser,
    farthest_point_sample,
    make_views,
    max_shift,
    normalised_white,
    patch_teacher,
    plan_views,
    scatter_mean,
    shift_grid,
)

PATCH = 2
GRID = 20  # max shift round(0.15 * 20) = 3 patches


def test_max_shift_matches_the_official_grids():
    assert max_shift(28) == 4  # CLIP B/16 at 448 (reference §1.3: 64 px)
    assert max_shift(37) == 6  # DINOv2 B/14 at 518 (84 px)


def test_normalised_white_matches_the_code_constants():
    assert normalised_white(CLIP_MEAN, CLIP_STD) == pytest.approx((1.93033625, 2.07488384, 2.14589699), abs=1e-6)
    imagenet = normalised_white((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert imagenet == pytest.approx((2.2489083, 2.42857143, 2.64), abs=1e-6)


def test_plan_views_view0_identity_flips_and_range():
    for seed in range(20):
        plan = plan_views(np.random.default_rng(seed), (28, 28), num_views=10)
        assert plan.offsets.shape == (10, 2) and plan.flips.shape == (10,)
        assert tuple(plan.offsets[0]) == (0, 0) and not plan.flips[0]
        assert np.abs(plan.offsets).max() <= 4
    flips = np.concatenate([plan_views(np.random.default_rng(s), (28, 28)).flips[1:] for s in range(200)])
    assert 0.4 < flips.mean() < 0.6  # Bernoulli(0.5) on views 1..N-1
    again = plan_views(np.random.default_rng(3), (28, 28))
    assert again.to_list() == plan_views(np.random.default_rng(3), (28, 28)).to_list()


def test_farthest_point_sample_picks_max_min_distance():
    points = np.array([[0, 0], [0, 1], [5, 5], [0, 2], [-5, 5]])
    chosen = farthest_point_sample(points, 3, first=0)
    assert chosen.tolist() == [0, 2, 4]  # (5,5) is farthest from (0,0); then (-5,5) (d²=50 vs 25 and 34)


def test_fps_spreads_offsets_more_than_random_choice():
    rng = np.random.default_rng(0)
    spreads_fps, spreads_rand = [], []
    for _ in range(50):
        pool = rng.integers(-4, 4, size=(100, 2), endpoint=True)
        fps = pool[farthest_point_sample(pool, 10, int(rng.integers(0, 100)))]
        rand = pool[rng.choice(100, 10, replace=False)]
        for picked, out in ((fps, spreads_fps), (rand, spreads_rand)):
            d = ((picked[:, None] - picked[None]) ** 2).sum(-1) + np.eye(10) * 1e9
            out.append(d.min())
    assert np.mean(spreads_fps) > np.mean(spreads_rand)


def test_shift_semantics_out_i_equals_in_i_plus_offset():
    x = torch.arange(25.0).view(1, 5, 5)
    out = shift_grid(x, 2, -1, fill=-1.0)
    for i in range(5):
        for j in range(5):
            si, sj = i + 2, j - 1
            expected = x[0, si, sj] if 0 <= si < 5 and 0 <= sj < 5 else -1.0
            assert out[0, i, j] == expected


def test_views_shift_then_flip_with_white_fill_and_coordinate_maps():
    images = torch.randn(1, 3, 8 * PATCH, 8 * PATCH)
    fill = (1.5, 2.5, 3.5)
    plan = plan_views(np.random.default_rng(0), (8, 8), 3)
    plan = type(plan)(offsets=np.array([[0, 0], [1, -2], [-3, 2]]), flips=np.array([False, True, False]))
    views, coords = make_views(images, [plan], PATCH, fill)
    assert views.shape == (3, 3, 16, 16) and coords.shape == (3, 2, 8, 8)
    assert torch.equal(views[0], images[0])
    expected1 = shift_grid(images[0], 1 * PATCH, -2 * PATCH, torch.tensor(fill).view(3, 1, 1)).flip(-1)
    assert torch.equal(views[1], expected1)
    # view 1: row i shows source row i+1 (last row padding); after the flip column j shows column 7-j-2.
    assert (coords[1, :, 7] == -1).all()  # padding rows of the coordinate map are -1
    assert coords[1, 0, 0, 7 - 2].item() == 1 and coords[1, 1, 0, 7 - 2].item() == 0
    white = views[1][:, -PATCH:, :]  # last patch row came from outside the image
    assert torch.allclose(white, torch.tensor(fill).view(3, 1, 1).expand_as(white))


def patch_linear_teacher(patch: int = PATCH, channels: int = 6, seed: int = 0):
    """An exactly shift- and flip-equivariant teacher: a per-patch linear map of mirror-symmetric weights."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, 3, patch, patch, generator=generator)
    weight = weight + weight.flip(-1)  # symmetric under horizontal flip within a patch
    calls = []

    def teacher(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return F.conv2d(x, weight, stride=patch)

    return teacher, calls


def test_equivariant_teacher_target_equals_plain_output():
    teacher, calls = patch_linear_teacher()
    images = torch.randn(3, 3, GRID * PATCH, GRID * PATCH)
    denoiser = TTADenoiser(PATCH, fill=(9.0, 9.0, 9.0))
    plans = [plan_views(np.random.default_rng(s), (GRID, GRID), 10) for s in range(3)]
    assert any(p.flips.any() for p in plans) and any(np.abs(p.offsets).sum() > 0 for p in plans)
    target = denoiser(patch_teacher(teacher), images, plans)[0].patches
    assert calls == [30]  # all B·N views in one teacher pass
    plain = teacher(images)
    assert torch.allclose(target, plain, atol=1e-5)


def test_fixed_positional_artifact_shrinks_as_views_grow():
    base_teacher, _ = patch_linear_teacher()
    artifact = 5.0 * torch.randn(1, 6, GRID, GRID, generator=torch.Generator().manual_seed(7))

    def teacher(x):
        return base_teacher(x) + artifact  # the same map at every position of every view

    images = torch.randn(8, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(1))
    clean = base_teacher(images)
    amplitudes = []
    for views in (1, 2, 5, 10, 30):
        denoiser = TTADenoiser(PATCH, fill=(0.0, 0.0, 0.0))
        plans = [plan_views(np.random.default_rng([views, i]), (GRID, GRID), views) for i in range(8)]
        residual = denoiser(patch_teacher(teacher), images, plans)[0].patches - clean
        amplitudes.append(residual.pow(2).mean().sqrt().item())
    assert amplitudes[0] == pytest.approx(artifact.pow(2).mean().sqrt().item(), rel=1e-4)  # N=1: untouched
    assert all(a > b for a, b in zip(amplitudes, amplitudes[1:], strict=False)), amplitudes
    assert amplitudes[3] < 0.6 * amplitudes[0]  # 10 views


def test_padding_never_enters_the_mean():
    fill = (3.0, -2.0, 7.0)
    base_teacher, _ = patch_linear_teacher()
    fill_patch = torch.tensor(fill).view(1, 3, 1, 1)

    def teacher(x):
        out = base_teacher(x)
        is_pad = (F.avg_pool2d((x - fill_patch).abs().sum(1, keepdim=True), PATCH) == 0)
        return out + 1e6 * is_pad.float()  # poison every padded token

    images = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    plans = [plan_views(np.random.default_rng(s + 10), (GRID, GRID), 10) for s in range(2)]
    target = TTADenoiser(PATCH, fill=fill)(patch_teacher(teacher), images, plans)[0].patches
    assert torch.allclose(target, base_teacher(images), atol=1e-4)


def test_scatter_counts_are_the_views_covering_each_patch():
    plan = plan_views(np.random.default_rng(5), (GRID, GRID), 10)
    _, coords = make_views(torch.zeros(1, 3, GRID * PATCH, GRID * PATCH), [plan], PATCH, (0.0, 0.0, 0.0))
    _, counts = scatter_mean(torch.zeros(10, 4, GRID, GRID), coords, [plan])
    expected = torch.zeros(GRID, GRID)
    for dy, dx in plan.offsets:  # source patch (r, c) is visible iff (r - dy, c - dx) lies in the grid
        rows = torch.arange(GRID).view(-1, 1) - int(dy)
        cols = torch.arange(GRID).view(1, -1) - int(dx)
        expected += ((rows >= 0) & (rows < GRID) & (cols >= 0) & (cols < GRID)).float()
    assert torch.equal(counts[0], expected)
    assert counts.min() >= 1  # view 0 covers every patch


def test_vectorised_views_equal_shift_then_flip_view_by_view():
    images = torch.randn(2, 3, 6 * PATCH, 5 * PATCH)
    fill = (0.5, -1.0, 2.0)
    plans = [plan_views(np.random.default_rng(s), (6, 5), 7, shift_frac=0.4) for s in range(2)]
    views, coords = make_views(images, plans, PATCH, fill)
    grid_coords = torch.stack(torch.meshgrid(torch.arange(6), torch.arange(5), indexing="ij"))
    k = 0
    for image, plan in zip(images, plans, strict=True):
        for (dy, dx), flip in zip(plan.offsets, plan.flips, strict=True):
            view = shift_grid(image, int(dy) * PATCH, int(dx) * PATCH, torch.tensor(fill).view(3, 1, 1))
            cmap = shift_grid(grid_coords, int(dy), int(dx), -1)
            if flip:
                view, cmap = view.flip(-1), cmap.flip(-1)
            assert torch.equal(views[k], view) and torch.equal(coords[k], cmap)
            k += 1


def test_teacher_outputs_keep_their_layers_and_the_identity_views_prefix():
    """A teacher gives one TokenOutput per layer: each layer is averaged, the prefix is view 0's (the image)."""
    from phreg_core.vit import TokenOutput

    base, _ = patch_linear_teacher()

    def teacher(views: torch.Tensor) -> list[TokenOutput]:
        patches = base(views)
        prefix = views.mean((2, 3)).unsqueeze(1)  # [V, 1, 3]: differs from view to view
        return [TokenOutput(patches, prefix, tuple(patches.shape[-2:]), layer=5),
                TokenOutput(2 * patches, -prefix, tuple(patches.shape[-2:]), layer=7)]

    images = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    plans = [plan_views(np.random.default_rng(s), (GRID, GRID), n) for s, n in ((0, 3), (1, 5))]  # unequal N
    outs = TTADenoiser(PATCH, fill=(0.0, 0.0, 0.0))(teacher, images, plans)
    assert [o.layer for o in outs] == [5, 7]
    assert torch.allclose(outs[0].patches, base(images), atol=1e-5)  # equivariant teacher: the plain output
    assert torch.allclose(outs[1].patches, 2 * base(images), atol=1e-5)
    assert torch.equal(outs[0].prefix, images.mean((2, 3)).unsqueeze(1))
    assert torch.equal(outs[1].prefix, -images.mean((2, 3)).unsqueeze(1))


def test_plans_must_start_with_the_identity_and_match_the_features():
    from phreg_core.errors import ConfigError

    teacher, _ = patch_linear_teacher()
    plan = plan_views(np.random.default_rng(0), (GRID, GRID), 3)
    shifted = type(plan)(offsets=plan.offsets[::-1].copy(), flips=plan.flips)
    images = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    with pytest.raises(ConfigError, match="identity view"):
        TTADenoiser(PATCH, fill=(0.0, 0.0, 0.0))(patch_teacher(teacher), images, [shifted])
    _, coords = make_views(images, [plan], PATCH, (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="4 view features for plans of 3 views"):
        scatter_mean(torch.zeros(4, 6, GRID, GRID), torch.cat([coords, coords[:1]]), [plan])
