"""The dense-feature contract every backbone implements.

A :class:`Backbone` wraps a :class:`phreg_core.vit.ViTAdapter` (the image tower, token-level), an optional
text tower, and :class:`BackboneInfo` metadata. Factories registered in ``BACKBONES`` return one:

    factory(name_or_argument: str | None, *, weights: str | None, random_init: bool, **options) -> Backbone

Factories take ``pos_resample=NAME`` (a policy of :mod:`phreg_core.pos_embed`) to override the family's
default positional-embedding resampling; the policy in use is part of :class:`BackboneInfo` and so of
every result's identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from phreg_core.errors import ConfigError
from phreg_core.vit import TokenOutput, ViTAdapter


class TextTower(Protocol):
    """What open-vocabulary tasks need from a text encoder."""

    identity: str  # stable id for caches: architecture + weights hash

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed prompts into the image tower's output space, ``[N, D]``, not normalised."""
        ...


@dataclass
class BackboneInfo:
    """Metadata recorded in every result and shown by ``phreg-bench ls backbones``."""

    name: str  # the canonical registry name (or pass-through name) the user asked for
    family: str  # "timm", "open_clip", "builtin", "custom", ...
    architecture: str  # e.g. "vit_base_patch14_dinov2", "ViT-B-16"
    weights_id: str  # e.g. "openai", "hf-hub:apple/DFN2B-CLIP-ViT-B-16", "random-init(seed=0)", a path
    weights_sha256: str | None  # sha256 of the weights file, or of the state dict for random init
    patch_size: int
    embed_dim: int
    output_dim: int
    depth: int
    num_heads: int
    num_registers: int
    has_text: bool
    native_resolution: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    # positional-embedding resampling policy (phreg_core.pos_embed); Backbone fills it from the adapter
    pos_resample: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["native_resolution"] = list(self.native_resolution)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data


def merge_reduced(reduced: bool | dict[str, int] | None, defaults: dict[str, int]) -> dict[str, int] | None:
    """The reduced test config of a family (same code path, small sizes): ``True`` for the defaults, or a
    dict overriding some of them; ``None``/``False`` for the full architecture."""
    if not reduced:
        return None
    config = dict(defaults)
    if isinstance(reduced, dict):
        unknown = set(reduced) - set(defaults)
        if unknown:
            raise ConfigError(f"reduced= takes {sorted(defaults)}, got {sorted(unknown)}")
        config.update(reduced)
    return config


class Backbone(nn.Module):
    """An image tower with the dense-feature contract, plus an optional text tower."""

    def __init__(self, vision: ViTAdapter, info: BackboneInfo, text: TextTower | None = None):
        super().__init__()
        if vision.pos_resample is None:
            raise TypeError(f"backbone {info.name!r}: its adapter {type(vision).__name__} declares no "
                            "positional-embedding resampling policy; set `pos_resample` on the adapter "
                            "(see phreg_core.pos_embed.POLICIES)")
        if info.pos_resample not in (None, vision.pos_resample.name):
            raise ValueError(f"backbone {info.name!r}: info says pos_resample={info.pos_resample!r} but the adapter "
                             f"resamples with {vision.pos_resample.name!r}")
        info.pos_resample = vision.pos_resample.name
        self.vision = vision
        self.info = info
        self.text = text
        if isinstance(text, nn.Module):
            self.text_module = text

    def set_pos_resample(self, policy: str) -> Backbone:
        """Resample positional embeddings with another policy from now on (recorded in ``info``)."""
        self.vision.set_pos_resample(policy)
        self.info.pos_resample = self.vision.pos_resample.name
        return self

    @property
    def has_text(self) -> bool:
        return self.text is not None

    def forward_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *, project: bool = False,
                       **hooks: Any) -> list[TokenOutput]:
        """The image tower's dense outputs: normalised ``[B, 3, H, W]`` -> one ``TokenOutput`` per layer.

        The contract (shapes, errors, ``project``) and the method ``hooks`` (``registers``, ``last_block``,
        ``final_norm``, ...) are :meth:`phreg_core.vit.ViTAdapter.forward_tokens`'s.
        """
        return self.vision.forward_tokens(images, layers, project=project, **hooks)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        if self.text is None:
            raise ConfigError(f"backbone {self.info.name!r} has no text tower; open-vocabulary tasks need one")
        return self.text.encode(texts)

    def normalize(self, images: Tensor) -> Tensor:
        """Normalise ``[B, 3, H, W]`` images in [0, 1] with the backbone's mean and std."""
        mean = torch.tensor(self.info.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.info.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std
