"""The backbone factory phreg-bench calls: ``build(argument, *, name, weights, random_init, **options)``."""

from __future__ import annotations

from pathlib import Path

import torch

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_bench.backbones.weights import state_dict_sha256
from phreg_example_backbone.model import ExampleViT
from phreg_example_backbone.tower import ExampleTokenViT


def build(argument: str | None = None, *, name: str = "example-vit", weights: str | None = None,
          random_init: bool = False, seed: int = 0, pos_resample: str | None = None, **options) -> Backbone:
    """ExampleViT with seeded random weights, or weights from a local safetensors file.

    ``name`` is the name phreg-bench was asked for (``example-vit`` through the entry point,
    ``phreg_example_backbone.factory:build`` as a target); results are filed under it.

    ``options`` are ExampleViT's constructor arguments (``image_size``, ``patch``, ``dim``, ``depth``,
    ``heads``), e.g. ``--backbone-option depth=2``. ``pos_resample`` (``--pos-resample``) chooses another
    positional-embedding resampling policy than the wrapper's ``"bicubic"``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ExampleViT(**options).eval()
    weights_id = f"random-init(seed={seed})"
    if weights:  # safetensors only: never unpickle a file
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights))
        weights_id = str(Path(weights).resolve())
    # what the weights are; geometry and preprocessing are read from the wrapper
    identity = BackboneIdentity(name=name, family="custom", architecture=f"ExampleViT({options})",
                                weights_id=weights_id, weights_sha256=state_dict_sha256(model))
    return Backbone(ExampleTokenViT(model, pos_resample or "bicubic"), identity)
