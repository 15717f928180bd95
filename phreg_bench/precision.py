"""The numeric precision of a run: which autocast the backbone forward gets, and what a result records.

``--precision bf16|fp16`` autocasts **only the backbone / method forward** (the dense tokens a task reads:
feature extraction for the probes, the image tower of the ovseg harness, the synthetic probe's features).
The model owns that autocast: the runner sets the resolved precision once
(:meth:`phreg_bench.methods.base.DenseModel.set_precision`) and ``DenseModel.forward_tokens`` runs the method
under :func:`autocast` and widens its outputs to float32. Nothing else autocasts, so everything after the
forward runs in float32: probe heads, losses, optimiser steps, text embeddings, cosine logits, resizing,
argmax and metrics.

The precision recorded in a result and entered in its config hash is :func:`resolve_precision`: the one
that actually runs. Autocast is used on any device type where torch offers it (CUDA, and CPU for both
bf16 and fp16 since torch 2.x); on a device type without autocast the run is fp32 and records ``fp32``.

What bf16 changes (CPU autocast, measured on the test fixtures; ``tests/test_precision_accuracy.py`` checks
the bounds below, 2-3x the measured values): ovseg cosine logits move by at most 0.0066 (tiny random CLIP,
NACLIP / raw / SCLIP blocks; bound :data:`OVSEG_LOGIT_BOUND`), a pixel changes class only where its fp32
decision was that close to a tie or to ``prob_thd``, mIoU moves by at most 0.016 points (bound
:data:`OVSEG_MIOU_BOUND`); probe features (tiny-vit, patches and CLS) move by at most 0.5 % of their largest
value (bound :data:`FEATURE_REL_BOUND`), and after training the probe heads on those fixtures linseg mIoU
moved by 0.02 points (64.45 -> 64.42) and depth RMSE by 0.005 m (0.521 -> 0.515).
"""

from __future__ import annotations

import contextlib

import torch

from phreg_bench.results.schema import PRECISIONS

__all__ = ["DTYPES", "FEATURE_REL_BOUND", "OVSEG_LOGIT_BOUND", "OVSEG_MIOU_BOUND", "PRECISIONS", "autocast",
           "resolve_precision"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OVSEG_LOGIT_BOUND = 0.02  # max |cosine logit (bf16) - cosine logit (fp32)| on the fixtures (measured 0.0066)
OVSEG_MIOU_BOUND = 0.05  # max |mIoU (bf16) - mIoU (fp32)| in points on the fixtures (measured 0.016)
FEATURE_REL_BOUND = 0.015  # max |feature (bf16) - feature (fp32)| / max |feature| on the fixtures (measured 0.005)


def resolve_precision(device: torch.device | str, requested: str) -> str:
    """The precision that runs on ``device`` when ``requested`` is asked for (``fp32`` without autocast there).

    Raises ``ValueError`` for a name outside :data:`PRECISIONS`.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    device_type = torch.device(device).type
    if requested == "fp32" or not torch.amp.is_autocast_available(device_type):
        return "fp32"
    return requested


def autocast(device: torch.device | str, precision: str):
    """The context for a backbone / method forward: autocast to ``precision`` on ``device``'s type.

    ``fp32`` gives a no-op context. Pass the resolved precision (:func:`resolve_precision`).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])
