"""Built-in backbones (declared lazily; each target is ``factory(argument, **options) -> Backbone``)."""

from __future__ import annotations

from phreg_bench.registries import BACKBONES

BACKBONES.add("tiny-vit", "phreg_bench.backbones.builtin:build_tiny_vit",
              summary="built-in 4-block ViT (random init, offline); the default run's backbone",
              patch_size=8, width=64, depth=4, text=False, registers=0)
