"""The PH-Reg distillation loss (paper §3.3; ``0raiser0/PH-Reg:DINOv2_full/utils/loss.py``).

``L = (1 − mean cos(target, pred)) + mse_scale · MSE(target, pred)``, on the final output patch tokens only
(CLS and register outputs excluded). The cosine is per token and averaged over batch × tokens.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["COS_EPS", "distill_loss", "token_cosine"]

COS_EPS = 1e-8  # a / (|a| + 1e-8) in the official loss


def token_cosine(target: Tensor, pred: Tensor, eps: float = COS_EPS) -> Tensor:
    """Per-token cosine ``[B, h, w]`` of channel-first grids ``[B, C, h, w]``, normalised as the code does."""
    a = target / (target.norm(dim=1, keepdim=True) + eps)
    b = pred / (pred.norm(dim=1, keepdim=True) + eps)
    return (a * b).sum(1)


def distill_loss(target: Tensor, pred: Tensor, mse_scale: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``(loss, {"cos": mean cosine, "mse": mse})`` for patch grids ``[B, C, h, w]`` (computed in float32).

    ``mse_scale`` is the recipe's (:attr:`phreg_core.recipe.Recipe.mse_scale`, official 1.0).
    """
    if target.shape != pred.shape:
        raise ValueError(f"target {tuple(target.shape)} and prediction {tuple(pred.shape)} differ; the "
                         "student and the teacher must return the same patch grid and width")
    target, pred = target.float(), pred.float()
    cos = token_cosine(target, pred).mean()
    mse = F.mse_loss(pred, target, reduction="mean")
    loss = (1.0 - cos) + mse_scale * mse
    return loss, {"cos": cos.detach(), "mse": mse.detach()}

