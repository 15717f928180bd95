"""Probe losses, heads and schedules against the reference formulas written out in NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from phreg_bench.probes.heads import BinsDepthHead, LinearSegHead
from phreg_bench.probes.losses import gradient_loss, seg_cross_entropy, sig_loss
from phreg_bench.probes.schedules import cosine_warmup_lr, one_cycle_beta1, poly_lr


def _depth_pair(seed: int, shape=(2, 1, 12, 10)):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(shape, generator=g, dtype=torch.float64) * 9 + 0.5
    gt[..., 0, 0] = 0.0  # invalid (no measurement)
    gt[..., 3, 4] = 11.0  # invalid (beyond max_depth)
    pred = gt.clamp(min=0.3) * (0.7 + 0.6 * torch.rand(shape, generator=g, dtype=torch.float64))
    return pred, gt


def test_sig_loss_matches_numpy():
    pred, gt = _depth_pair(0)
    p, t = pred.numpy(), gt.numpy()
    valid = (t > 0) & (t <= 10)
    g = np.log(p[valid] + 1e-3) - np.log(t[valid] + 1e-3)
    want = math.sqrt(g.var(ddof=1) + 0.15 * g.mean() ** 2)
    assert float(sig_loss(pred, gt, max_depth=10)) == pytest.approx(want, rel=1e-12)
    assert float(sig_loss(pred, gt, max_depth=10, warm_up=True)) == pytest.approx(math.sqrt(0.15 * g.mean() ** 2))


def _megadepth_numpy(p: np.ndarray, t: np.ndarray) -> float:
    total = 0.0
    for s in (1, 2, 4, 6):
        ps, ts = p[::s, ::s], t[::s, ::s]
        mask = ((ts > 0) & (ts <= 10)).astype(np.float64)
        d = (np.log(ps + 1e-3) - np.log(ts + 1e-3)) * mask
        v = np.abs(d[:-2] - d[2:]) * mask[:-2] * mask[2:]
        h = np.abs(d[:, :-2] - d[:, 2:]) * mask[:, :-2] * mask[:, 2:]
        total += (v.sum() + h.sum()) / mask.sum()
    return total


def test_gradient_loss_per_image_matches_numpy_and_published_layout_is_zero():
    pred, gt = _depth_pair(1)
    want = np.mean([_megadepth_numpy(pred[i, 0].numpy(), gt[i, 0].numpy()) for i in range(2)])
    got = gradient_loss(pred, gt, max_depth=10, layout="per-image")
    assert float(got) == pytest.approx(want, rel=1e-12)
    # The reference slices axes 0 and 1 of [B, 1, H, W] tensors: with 2 images per group both slices are empty.
    assert float(gradient_loss(pred, gt, max_depth=10, layout="published")) == 0.0
    with pytest.raises(ValueError, match="layout"):
        gradient_loss(pred, gt, layout="other")


def test_seg_cross_entropy_averages_over_all_pixels_including_ignored():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[0, 0] = 255
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    assert float(seg_cross_entropy(logits, labels)) == pytest.approx(float(per_pixel.sum() / labels.numel()))
    up = seg_cross_entropy(logits[:, :, ::2, ::2], labels)  # logits resized to the label size
    assert torch.isfinite(up)


def test_bins_head_commutes_conv_and_upsampling_and_stays_in_range():
    torch.manual_seed(0)
    head = BinsDepthHead(8, n_bins=16, upsample=4)
    patches, cls = torch.randn(2, 8, 3, 5), torch.randn(2, 8)
    with torch.no_grad():
        out = head(patches, cls)
    assert out.shape == (2, 1, 12, 20)
    assert float(out.min()) >= 1e-3 and float(out.max()) <= 10.0
    # reference order: concat, upsample the 2C-channel features, 1x1 conv, relu + 0.1, normalise, expectation
    feats = torch.cat([patches, cls[:, :, None, None].expand(-1, -1, 3, 5)], 1)
    feats = F.interpolate(feats, scale_factor=4, mode="bilinear", align_corners=False)
    with torch.no_grad():
        prob = torch.relu(head.conv_depth(feats)) + 0.1
    prob = prob / prob.sum(1, keepdim=True)
    want = torch.einsum("bkhw,k->bhw", prob, torch.linspace(1e-3, 10.0, 16)).unsqueeze(1)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_seg_head_init_and_shape():
    torch.manual_seed(0)
    head = LinearSegHead(64, 21)
    assert head.conv_seg.weight.std().item() == pytest.approx(0.01, rel=0.15)
    assert torch.count_nonzero(head.conv_seg.bias) == 0
    assert head(torch.randn(2, 64, 4, 4)).shape == (2, 21, 4, 4)


def test_schedules_closed_forms():
    assert poly_lr(1e-3, 0, 100) == pytest.approx(1e-3)
    assert poly_lr(1e-3, 50, 100) == pytest.approx(1e-3 * 0.5**0.9)
    assert poly_lr(1e-3, 100, 100) == 0.0
    # mmcv: warm-up scales the cosine value, starting at warmup_ratio x lr
    assert cosine_warmup_lr(5e-3, 0, 30000, warmup_iters=12800) == pytest.approx(5e-6)
    cosine = 5e-11 + 0.5 * (5e-3 - 5e-11) * (1 + math.cos(math.pi * 12800 / 30000))
    assert cosine_warmup_lr(5e-3, 12800, 30000, warmup_iters=12800) == pytest.approx(cosine)
    assert cosine_warmup_lr(5e-3, 6400, 30000, warmup_iters=12800) < cosine
    # one-cycle beta1: 0.95 -> 0.85 at 30 % -> 0.95 at the end
    assert one_cycle_beta1(0, 1000) == pytest.approx(0.95)
    assert one_cycle_beta1(299, 1000) == pytest.approx(0.85)
    assert one_cycle_beta1(999, 1000) == pytest.approx(0.95)
    assert 0.85 < one_cycle_beta1(600, 1000) < 0.95
