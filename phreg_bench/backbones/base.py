"""The dense-feature contract every backbone implements.

A :class:`Backbone` wraps a :class:`phreg_core.vit.TokenViT` (the image tower, token-level), an optional
text tower, and a frozen :class:`BackboneIdentity` (what the weights *are*: name, family, architecture,
weights). Geometry and preprocessing (patch size, widths, depth, mean/std, positional-embedding
resampling...) are read live from the ViT wrapper, never copied. Factories registered in ``BACKBONES`` return
one:

    factory(argument: str | None, *, name: str = ..., weights: str | None, random_init: bool, **options)
        -> Backbone

``name`` is the name the backbone was asked for (:func:`phreg_bench.backbones.build.build_backbone` passes
it to every factory that declares the parameter; a factory that does not keeps the name it gives itself).
Factories take ``pos_resample=NAME`` (a policy of :mod:`phreg_core.pos_embed`) to override the family's
default positional-embedding resampling; the policy in use is part of :meth:`Backbone.describe` and so of
every result's identity.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from phreg_core.errors import ConfigError
from phreg_core.vit import TokenOutput, TokenViT


class TextTower(Protocol):
    """What open-vocabulary tasks need from a text encoder."""

    identity: str  # stable id for caches: architecture + weights hash

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed prompts into the image tower's output space, ``[N, D]``, not normalised."""
        ...


class FrozenMapping(Mapping[str, Any]):
    """A read-only mapping; unlike ``types.MappingProxyType`` it can be copied and pickled (backbones are)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None):
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return type(self), (self._data,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


def _freeze(value: Any) -> Any:
    """A read-only copy of JSON-like data: mappings become :class:`FrozenMapping`, lists and tuples tuples."""
    if isinstance(value, Mapping):
        return FrozenMapping({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    """Plain ``dict``/``list`` data from :func:`_freeze`'s form (what a result record holds)."""
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


@dataclass(frozen=True)
class BackboneIdentity:
    """What a backbone's weights are, made once by its factory and never changed.

    ``extra`` holds family-specific facts (hub repo, pretrained tag, reduced config...); it is stored
    read-only (nested mappings as :class:`FrozenMapping`, sequences as tuples) and written to results as plain
    JSON by :meth:`Backbone.describe`.
    """

    name: str  # the name the backbone was asked for: registry name, pass-through name or module:factory
    family: str  # "timm", "open_clip", "builtin", "custom", ...
    architecture: str  # e.g. "vit_base_patch14_dinov2", "ViT-B-16"
    weights_id: str  # e.g. "openai", "hf-hub:apple/DFN2B-CLIP-ViT-B-16", "random-init(seed=0)", a path
    weights_sha256: str | None  # sha256 of the weights file, or of the state dict for random init
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra", _freeze(self.extra))


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
    """An image tower with the dense-feature contract, plus an optional text tower.

    ``identity`` says what the weights are; every geometry and preprocessing fact is a read-only property
    read from the image tower ``vision``. Raises ``TypeError`` when the wrapper declares no
    positional-embedding resampling policy.
    """

    def __init__(self, vision: TokenViT, identity: BackboneIdentity, text: TextTower | None = None):
        super().__init__()
        if vision.pos_resample is None:
            raise TypeError(f"backbone {identity.name!r}: its TokenViT {type(vision).__name__} declares no "
                            "positional-embedding resampling policy; set `pos_resample` on the TokenViT "
                            "(see phreg_core.pos_embed.POLICIES)")
        self.vision = vision
        self.identity = identity
        self.text = text  # an nn.Module text tower registers as the submodule `text`

    def set_pos_resample(self, policy: str) -> Backbone:
        """Resample positional embeddings with another policy (a name of
        :data:`phreg_core.pos_embed.POLICIES`) from now on; :attr:`pos_resample` and :meth:`describe` follow."""
        self.vision.set_pos_resample(policy)
        return self

    # -- identity and geometry, read from the identity and the image tower ----------------------------------
    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def patch_size(self) -> int:
        """Patch side in pixels."""
        return self.vision.patch_size

    @property
    def embed_dim(self) -> int:
        """Token width ``C`` of the transformer blocks."""
        return self.vision.embed_dim

    @property
    def output_dim(self) -> int:
        """Width of projected tokens (CLIP's joint space); ``embed_dim`` without a projection."""
        return self.vision.output_dim

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return self.vision.depth

    @property
    def num_heads(self) -> int:
        return self.vision.num_heads

    @property
    def num_registers(self) -> int:
        """Register tokens the model was trained with (not counting the CLS token)."""
        return self.vision.num_builtin_registers

    @property
    def native_resolution(self) -> tuple[int, int]:
        """``(height, width)`` in pixels of the grid the position table is stored at."""
        return self.vision.native_resolution

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel normalisation mean for images in [0, 1]."""
        return tuple(self.vision.mean)

    @property
    def std(self) -> tuple[float, float, float]:
        return tuple(self.vision.std)

    @property
    def interpolation(self) -> str:
        """The resize interpolation of the weights' preprocessing (``"bicubic"``, ``"bilinear"``)."""
        return self.vision.interpolation

    @property
    def pos_resample(self) -> str:
        """Name of the positional-embedding resampling policy in use (:mod:`phreg_core.pos_embed`)."""
        return self.vision.pos_resample.name

    @property
    def has_class_token(self) -> bool:
        return self.vision.has_class_token

    @property
    def has_text(self) -> bool:
        return self.text is not None

    def describe(self) -> dict[str, Any]:
        """The ``backbone`` section of a result record (plain JSON data; its identity part enters the config
        hash, :func:`phreg_bench.results.hashing.backbone_identity`)."""
        identity = self.identity
        return {
            "name": identity.name, "family": identity.family, "architecture": identity.architecture,
            "weights_id": identity.weights_id, "weights_sha256": identity.weights_sha256,
            "patch_size": self.patch_size, "embed_dim": self.embed_dim, "output_dim": self.output_dim,
            "depth": self.depth, "num_heads": self.num_heads, "num_registers": self.num_registers,
            "has_text": self.has_text, "native_resolution": list(self.native_resolution),
            "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation,
            "pos_resample": self.pos_resample, "extra": _thaw(identity.extra),
        }

    # -- the contract ------------------------------------------------------------------------------------------
    def forward_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *, project: bool = False,
                       **hooks: Any) -> list[TokenOutput]:
        """The image tower's dense outputs: normalised ``[B, 3, H, W]`` -> one ``TokenOutput`` per layer.

        The contract (shapes, errors, ``project``) and the method ``hooks`` (``registers``, ``last_block``,
        ``final_norm``, ...) are :meth:`phreg_core.vit.TokenViT.forward_tokens`'s.
        """
        return self.vision.forward_tokens(images, layers, project=project, **hooks)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        if self.text is None:
            raise ConfigError(f"backbone {self.name!r} has no text tower; open-vocabulary tasks need one")
        return self.text.encode(texts)

    def normalize(self, images: Tensor) -> Tensor:
        """Normalise ``[B, 3, H, W]`` images in [0, 1] with the backbone's mean and std."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std
