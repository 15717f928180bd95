"""The backbone factory phreg-bench calls: ``build(argument, *, weights, random_init, **options)``."""

from __future__ import annotations

from pathlib import Path

import torch

from phreg_bench.backbones.base import Backbone, BackboneInfo
from phreg_bench.backbones.weights import state_dict_sha256
from phreg_example_backbone.adapter import ExampleViTAdapter
from phreg_example_backbone.model import ExampleViT


def build(argument: str | None = None, *, weights: str | None = None, random_init: bool = False,
          seed: int = 0, pos_resample: str | None = None, **options) -> Backbone:
    """ExampleViT with seeded random weights, or weights from a local safetensors file.

    ``options`` are ExampleViT's constructor arguments (``image_size``, ``patch``, ``dim``, ``depth``,
    ``heads``), e.g. ``--backbone-option depth=2``. ``pos_resample`` (``--pos-resample``) chooses another
    positional-embedding resampling policy than the adapter's ``"bicubic"``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ExampleViT(**options).eval()
    weights_id = f"random-init(seed={seed})"
    if weights:  # safetensors only: never unpickle a file
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights))
        weights_id = str(Path(weights).resolve())
    vision = ExampleViTAdapter(model, pos_resample or "bicubic")
    size = model.grid * model.patch
    info = BackboneInfo(
        name="example-vit", family="custom", architecture=f"ExampleViT({options})", weights_id=weights_id,
        weights_sha256=state_dict_sha256(model), patch_size=vision.patch_size, embed_dim=vision.embed_dim,
        output_dim=vision.output_dim, depth=vision.depth, num_heads=vision.num_heads, num_registers=0,
        has_text=False, native_resolution=(size, size), mean=vision.mean, std=vision.std,
    )
    return Backbone(vision, info)
