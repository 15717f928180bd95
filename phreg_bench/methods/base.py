"""Methods are wrappers around a backbone, never forks of it.

A method factory registered in ``METHODS`` has the signature

    factory(backbone: Backbone, **options) -> DenseModel

and the returned :class:`DenseModel` is everything a task uses: the dense features
(:meth:`DenseModel.forward_tokens`, the same contract as :meth:`phreg_core.vit.TokenViT.forward_tokens`),
the geometry and preprocessing of the backbone, its text tower, and the precision its forward runs at.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.options import method_options
from phreg_bench.precision import PRECISIONS, autocast
from phreg_core.errors import ConfigError
from phreg_core.vit import TokenOutput


class DenseModel(nn.Module):
    """A backbone as run by one method: what every task reads, and nothing else.

    Callers use :meth:`forward_tokens`; a method subclass overrides :meth:`dense_tokens` (same signature, no
    autocast) and may refuse ``layers`` it cannot give with a :class:`ConfigError` naming the method and the
    layers it supports. ``method_config`` holds every setting that changes the numbers (it enters the
    result's config hash). ``precision`` (:meth:`set_precision`; ``fp32`` by default) is the autocast of
    the model's own forward; everything a task does with the outputs runs in float32.
    """

    def __init__(self, backbone: Backbone, method_name: str, method_config: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.method_name = method_name
        self.method_config = dict(method_config or {})
        self.precision = "fp32"

    # -- what tasks read about the backbone --------------------------------------------------------------
    @property
    def name(self) -> str:
        """The backbone's name (registry or pass-through name)."""
        return self.backbone.name

    @property
    def patch_size(self) -> int:
        """Pixels per patch side: inputs must be multiples of it; the grid is ``(H, W) / patch_size``."""
        return self.backbone.patch_size

    @property
    def embed_dim(self) -> int:
        """Width ``C`` of unprojected tokens (``project=False``), what probe heads read."""
        return self.backbone.embed_dim

    @property
    def mean(self) -> tuple[float, float, float]:
        """Per-channel mean of :meth:`normalize` (images in [0, 1])."""
        return self.backbone.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """Per-channel standard deviation of :meth:`normalize`."""
        return self.backbone.std

    @property
    def native_resolution(self) -> tuple[int, int]:
        """The ``(H, W)`` in pixels the backbone was trained at."""
        return self.backbone.native_resolution

    @property
    def has_class_token(self) -> bool:
        """Whether ``prefix[:, 0]`` of every output is a CLS token."""
        return self.backbone.has_class_token

    @property
    def has_text(self) -> bool:
        """Whether :meth:`encode_text` works (open-vocabulary tasks need it)."""
        return self.backbone.has_text

    @property
    def text_identity(self) -> str | None:
        """Stable id of the text tower (architecture + weights hash) for text-embedding caches; ``None``
        without a text tower."""
        return self.backbone.text.identity if self.backbone.text is not None else None

    def feature_identity(self) -> dict[str, Any]:
        """What identifies the dense features (feature-cache keys): backbone name, architecture, weights bytes
        (or their id when no sha256 is known), positional-embedding policy, and :meth:`describe`."""
        identity = self.backbone.identity
        return {
            "backbone": identity.name,
            "architecture": identity.architecture,
            "weights_sha256": identity.weights_sha256,
            "weights_id": None if identity.weights_sha256 else identity.weights_id,
            "pos_resample": self.backbone.pos_resample,  # phreg_core.pos_embed policy: changes features at other grids
            "method": self.describe(),
        }

    @property
    def weights_sha256(self) -> str | None:
        """sha256 of the backbone's weights, ``None`` when unknown (then features are not cached across runs)."""
        return self.backbone.identity.weights_sha256

    def normalize(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` images in [0, 1] -> normalised with :attr:`mean` / :attr:`std` (same shape and dtype)."""
        return self.backbone.normalize(images)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Prompt embeddings ``[N, D]`` (``D`` = the width of ``forward_tokens(..., project=True)``), not
        normalised. Raises :class:`ConfigError` without a text tower."""
        return self.backbone.encode_text(texts)

    def describe(self) -> dict[str, Any]:
        """The method part of a result's identity: ``{"name": ..., "config": method_config}``."""
        return {"name": self.method_name, "config": self.method_config}

    # -- the dense features ----------------------------------------------------------------------------------
    def set_precision(self, precision: str) -> DenseModel:
        """Run :meth:`forward_tokens` under ``precision``'s autocast (``fp32``: none); returns ``self``.

        Pass the precision that runs on the device (:func:`phreg_bench.precision.resolve_precision`).
        """
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        return self

    def forward_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                       project: bool = False) -> list[TokenOutput]:
        """Dense outputs of normalised ``images`` ``[B, 3, H, W]`` (``H``, ``W`` multiples of :attr:`patch_size`,
        else :class:`ConfigError`), one :class:`TokenOutput` per entry of ``layers``, in that order.

        Each has ``patches`` ``[B, C, h, w]`` (``(h, w) = (H, W) / patch_size``) and ``prefix`` ``[B, P, C]``
        (CLS if any, then registers). ``project=False`` (the default, as at every layer) gives the
        final-normalised width-:attr:`embed_dim` tokens probes read; ``project=True`` maps them into the joint
        image-text space of :meth:`encode_text` (CLIP's ``proj``; open-vocabulary tasks). With :attr:`precision`
        ``bf16``/``fp16`` the method runs under that autocast on the images' device and the outputs are widened
        to float32; with ``fp32`` it runs as it is (float32 weights and images give float32 outputs).
        ``layers`` a method cannot give raise :class:`ConfigError` naming what it gives.
        """
        if not layers:
            raise ConfigError(f"method {self.method_name!r}: forward_tokens needs at least one layer index")
        if self.precision == "fp32":  # no autocast: the outputs are exactly the method's
            return self.dense_tokens(images, layers, project=project)
        with autocast(images.device, self.precision):
            outputs = self.dense_tokens(images, layers, project=project)
        return [TokenOutput(patches=out.patches.float(), prefix=out.prefix.float(), grid=out.grid, layer=out.layer)
                for out in outputs]

    def dense_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                     project: bool = False) -> list[TokenOutput]:
        """The method's forward, as :meth:`forward_tokens` without the autocast and the float32 widening.

        Methods override this; a wrapping method (``tta``, ``dvt``) calls its inner method's ``dense_tokens``.
        The plain backbone (method ``raw``) gives every layer.
        """
        return self.backbone.forward_tokens(images, layers, project=project)

    def forward(self, images: Tensor) -> Tensor:
        """Final-layer patch features ``[B, C, h, w]`` through the tower's projection (CLIP's ``proj``; the
        identity for towers without one): ``forward_tokens(images, project=True)[0].patches``."""
        return self.forward_tokens(images, project=True)[0].patches


@method_options("raw")
def build_raw(backbone: Backbone) -> DenseModel:
    """The backbone as it is: no method applied (no options)."""
    return DenseModel(backbone, "raw", {})
