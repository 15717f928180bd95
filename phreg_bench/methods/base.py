"""Methods are wrappers around a backbone, never forks of it.

A method factory registered in ``METHODS`` has the signature

    factory(backbone: Backbone, **options) -> DenseModel

and the returned :class:`DenseModel` gives the final-layer dense features the tasks consume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.options import method_options
from phreg_core.vit import TokenOutput


class DenseModel(nn.Module):
    """A backbone as run by one method. Subclasses override :meth:`forward_tokens`.

    ``method_config`` holds every setting that changes the numbers (it enters the result's config hash).
    """

    def __init__(self, backbone: Backbone, method_name: str, method_config: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.method_name = method_name
        self.method_config = dict(method_config or {})

    def forward_tokens(self, images: Tensor, *, project: bool = True) -> TokenOutput:
        """Final-layer tokens of normalised ``images`` ``[B, 3, H, W]``.

        ``project=True`` maps CLIP tokens into the joint image-text space (what open-vocabulary tasks
        need); ``project=False`` gives the final-normalised width-``embed_dim`` tokens (probe tasks).
        """
        return self.backbone.forward_tokens(images, project=project)[0]

    def forward(self, images: Tensor) -> Tensor:
        return self.forward_tokens(images).patches

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.backbone.encode_text(texts)

    def describe(self) -> dict[str, Any]:
        return {"name": self.method_name, "config": self.method_config}


@method_options("raw")
def build_raw(backbone: Backbone) -> DenseModel:
    """The backbone as it is: no method applied (no options)."""
    return DenseModel(backbone, "raw", {})
