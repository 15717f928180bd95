"""Artifact diagnostics on patch grids ``[B, C, h, w]``: norms, high-norm outliers, cosine to a target.

* Patch-norm statistics: artifacts show up as a few patch tokens with very large norms (Darcet et al.,
  "Vision Transformers Need Registers": norm > 150 in DINOv2).
* High-norm outlier rate: the share of patch tokens above an absolute threshold (as in Darcet et al. and
  test-time-registers, whose thresholds are model-specific) or, by default, above ``relative`` × the
  median patch norm of their image. The relative rule and its default 2.0 are this project's convention,
  not from a paper; pass ``threshold`` to use a model's published absolute value.
* Cosine-to-target percentiles 50/70/90/95/99 of the per-patch cosine between a prediction and the
  denoised target (PH-Reg paper Fig. 5). Artifacts live in the worst patches, so by default ``pK`` is the
  cosine that K % of patches reach or exceed (``p99`` ≈ the worst 1 %). This reading fits the paper's
  remarks ("at 10 augmentations the 99th-percentile cosine is above 0.95"; "with 1 register the 99th
  percentile exceeds the 0-register median") but is UNCONFIRMED (no code released); ``from_worst=False``
  gives ordinary percentiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from phreg_core.losses import token_cosine

__all__ = ["COSINE_PERCENTILES", "cosine_to_target_percentiles", "high_norm_mask", "outlier_rate",
           "patch_norm_stats"]

COSINE_PERCENTILES = (50, 70, 90, 95, 99)  # PH-Reg paper Fig. 5
DEFAULT_RELATIVE = 2.0  # project convention: > 2× the image's median patch norm


def patch_norms(patches: Tensor) -> Tensor:
    """L2 norm of every patch token, ``[B, h, w]``."""
    return patches.float().norm(dim=1)


def patch_norm_stats(patches: Tensor) -> dict[str, float]:
    """Mean, std, min, median, p99 and max of patch-token norms over the batch."""
    norms = patch_norms(patches).flatten()
    quantiles = torch.quantile(norms, torch.tensor([0.5, 0.99], device=norms.device))
    return {
        "mean": float(norms.mean()),
        "std": float(norms.std(unbiased=False)),
        "min": float(norms.min()),
        "median": float(quantiles[0]),
        "p99": float(quantiles[1]),
        "max": float(norms.max()),
    }


def high_norm_mask(patches: Tensor, threshold: float | None = None, relative: float = DEFAULT_RELATIVE) -> Tensor:
    """Boolean ``[B, h, w]``: norm > ``threshold``, or > ``relative`` × the image's median norm."""
    norms = patch_norms(patches)
    if threshold is not None:
        return norms > threshold
    median = norms.flatten(1).median(dim=1).values.view(-1, 1, 1)
    return norms > relative * median


def outlier_rate(patches: Tensor, threshold: float | None = None, relative: float = DEFAULT_RELATIVE) -> float:
    """Share of patch tokens flagged by :func:`high_norm_mask`."""
    return float(high_norm_mask(patches, threshold, relative).float().mean())


def cosine_to_target_percentiles(pred: Tensor, target: Tensor, percentiles: Sequence[int] = COSINE_PERCENTILES,
                                 from_worst: bool = True) -> dict[str, float]:
    """``{"p50": …, "p99": …}`` of the per-patch cosine to the target (PH-Reg Fig. 5; see module notes)."""
    cos = token_cosine(target.float(), pred.float()).flatten()
    levels = [1.0 - p / 100.0 if from_worst else p / 100.0 for p in percentiles]
    qs = torch.tensor(levels, device=cos.device, dtype=cos.dtype)
    values = torch.quantile(cos, qs)
    return {f"p{p}": float(v) for p, v in zip(percentiles, values, strict=True)}
