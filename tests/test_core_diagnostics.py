"""Artifact diagnostics: patch-norm statistics, high-norm outliers, cosine-to-target percentiles."""

from __future__ import annotations

import pytest
import torch
from test_core_fixtures import one_thread  # noqa: F401

from phreg_core.diagnostics import cosine_to_target_percentiles, outlier_rate, patch_norm_stats


def planted(count: int = 3) -> torch.Tensor:
    patches = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    patches[0, :, 0, :count] *= 50.0  # a few high-norm tokens in image 0
    return patches


def test_patch_norm_stats():
    stats = patch_norm_stats(planted())
    assert stats["max"] > 10 * stats["median"] and stats["min"] <= stats["median"] <= stats["p99"] <= stats["max"]
    assert set(stats) == {"mean", "std", "min", "median", "p99", "max"}


def test_outlier_rate_relative_and_absolute():
    patches = planted(3)
    assert outlier_rate(patches) == pytest.approx(3 / 128)
    norms = patches.norm(dim=1)
    assert outlier_rate(patches, threshold=float(norms.max()) + 1) == 0.0


def test_cosine_percentiles_from_the_worst_patches():
    target = torch.randn(4, 8, 10, 10)
    noisy = target.clone()
    noisy[:, :, 0, :5] = torch.randn(4, 8, 5)  # 5 % of patches are artifacts
    result = cosine_to_target_percentiles(noisy, target)
    assert list(result) == ["p50", "p70", "p90", "p95", "p99"]
    assert result["p50"] == pytest.approx(1.0, abs=1e-5) and result["p90"] == pytest.approx(1.0, abs=1e-5)
    assert result["p99"] < 0.9  # the worst 1 % sit among the planted artifacts
    values = list(result.values())
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    ordinary = cosine_to_target_percentiles(noisy, target, from_worst=False)
    assert ordinary["p50"] == pytest.approx(1.0, abs=1e-5)
