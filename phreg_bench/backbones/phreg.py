"""Pass-through backbone ``phreg:<base>``: the base backbone, named as a PH-Reg student's base.

Results of ``phreg-bench run --backbone phreg:<base> --adapter PATH`` are filed under ``phreg:<base>``; the
weights (and their sha256, which the ``phreg`` method checks against the adapter) are the base's. The base's
name is recorded in ``info.extra['phreg_base']`` (:data:`phreg_bench.results.hashing.BASE_NAME_KEY`): the
leaderboard computes the delta of a ``phreg:<base>`` row against ``<base>`` with method ``raw``
(:func:`phreg_bench.results.hashing.base_backbone_identity`).
"""

from __future__ import annotations

from typing import Any

from phreg_bench.backbones.base import Backbone
from phreg_bench.results.hashing import BASE_NAME_KEY
from phreg_core.errors import ConfigError


def build(argument: str | None, *, weights: str | None = None, random_init: bool = False,
          **options: Any) -> Backbone:
    from phreg_bench.backbones.catalogue import BACKBONES

    if not argument:
        raise ConfigError("backbone 'phreg:' needs a base, e.g. phreg:tiny-vit or phreg:open_clip:ViT-B-16/openai")
    backbone = BACKBONES.get(argument)(weights=weights, random_init=random_init, **options)
    backbone.info.extra = {**backbone.info.extra, BASE_NAME_KEY: backbone.info.name}
    backbone.info.name = f"phreg:{backbone.info.name}"
    return backbone
