"""Learning-rate and momentum schedules of the probe protocols, as closed-form functions of the step.

* Segmentation: mmengine ``PolyLR(eta_min=0, power=0.9, begin=0, end=iters, by_epoch=False)``, i.e.
  ``lr_t = (lr_0 - eta_min) * (1 - t / T) ** power + eta_min`` [PH-Reg ``voc21_cfg.py`` / ``ade20k_cfg.py``].
* Depth: mmcv ``CosineAnnealing`` with linear warm-up (``warmup_iters=12800, warmup_ratio=0.001,
  min_lr_ratio=1e-8, by_epoch=False``) and ``momentum_config=dict(policy='OneCycle')`` (AdamW's beta1
  cycles 0.95 -> 0.85 -> 0.95 with a cosine, ``pct_start=0.3``) [PH-Reg ``vitb_nyu_linear_config.py``;
  formulas from ``open-mmlab/mmcv:mmcv/runner/hooks/{lr_updater,momentum_updater}.py``].
"""

from __future__ import annotations

import math

from torch.optim import Optimizer


def poly_lr(base_lr: float, step: int, total: int, *, power: float = 0.9, eta_min: float = 0.0) -> float:
    """mmengine ``PolyLR`` at 0-based ``step`` of ``total``."""
    progress = min(step, total) / total
    return (base_lr - eta_min) * (1 - progress) ** power + eta_min


def annealing_cos(start: float, end: float, factor: float) -> float:
    """mmcv ``annealing_cos``: cosine from ``start`` (factor 0) to ``end`` (factor 1)."""
    return end + 0.5 * (start - end) * (math.cos(math.pi * factor) + 1)


def cosine_warmup_lr(base_lr: float, step: int, total: int, *, warmup_iters: int, warmup_ratio: float = 1e-3,
                     min_lr_ratio: float = 1e-8) -> float:
    """mmcv ``CosineAnnealingLrUpdaterHook`` with ``warmup='linear'`` (warm-up scales the cosine value)."""
    regular = annealing_cos(base_lr, base_lr * min_lr_ratio, step / total)
    if step < warmup_iters:
        k = (1 - step / warmup_iters) * (1 - warmup_ratio)
        return regular * (1 - k)
    return regular


def one_cycle_beta1(step: int, total: int, *, base: float = 0.85, maximum: float = 0.95,
                    pct_start: float = 0.3) -> float:
    """mmcv ``OneCycleMomentumUpdaterHook`` (two phases, cosine): max -> base -> max."""
    phases = [(pct_start * total - 1, maximum, base), (total - 1, base, maximum)]
    start_iter = 0.0
    for index, (end_iter, start_value, end_value) in enumerate(phases):
        if step <= end_iter or index == len(phases) - 1:
            return annealing_cos(start_value, end_value, (step - start_iter) / (end_iter - start_iter))
        start_iter = end_iter
    raise AssertionError("unreachable")


def set_lr(optimizer: Optimizer, lr: float, beta1: float | None = None) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        if beta1 is not None:
            group["betas"] = (beta1, group["betas"][1])
