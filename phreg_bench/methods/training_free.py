"""Training-free open-vocabulary methods: CLIP with its last block run differently.

Each factory wraps a backbone with one :data:`phreg_core.last_block.PRESETS` entry (reference notes §4):

* ``maskclip`` — MaskCLIP as PH-Reg / ClearCLIP define it: ``out_proj(v)``, no residual, no FFN
  (``0raiser0/PH-Reg:models/OpenaiMaskCLIP/clip_reg.py``);
* ``maskclip-official`` — MaskCLIP ECCV'22: the value path keeps the residual and the FFN
  (``chongzhou96/MaskCLIP:mmseg/models/backbones/vit.py``);
* ``sclip`` — SCLIP ECCV'24 correlative self-attention ``softmax(q qᵀ s) + softmax(k kᵀ s)``, residual and
  FFN kept (``wangf3014/SCLIP:clip/model.py``);
* ``clearclip`` — ClearCLIP ECCV'24: ``softmax(q qᵀ s)``, no residual, no FFN (``mc-lan/ClearCLIP``);
* ``naclip`` — NACLIP WACV'25: ``softmax(k kᵀ s + Ω)`` with a Gaussian neighbourhood bias of σ = 5, reduced
  block (``sinahmr/NACLIP:clip/model.py``).

``method_config`` is the preset's :meth:`LastBlockConfig.to_dict` (it enters the result's config hash).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.base import DenseModel
from phreg_bench.methods.options import Option, method_options
from phreg_core.last_block import PRESETS, LastBlockConfig
from phreg_core.vit import TokenOutput


class LastBlockModel(DenseModel):
    """A backbone whose final block is replaced by a :class:`LastBlockConfig`."""

    def __init__(self, backbone: Backbone, method_name: str, config: LastBlockConfig):
        super().__init__(backbone, method_name, config.to_dict())
        self.last_block = config

    def dense_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                     project: bool = False) -> list[TokenOutput]:
        """Every layer: the last block runs as ``self.last_block``, so ``layers`` before the last are the
        backbone's own, unchanged (the method alters only the final block). Shapes:
        :meth:`DenseModel.forward_tokens`."""
        return self.backbone.forward_tokens(images, layers, last_block=self.last_block, project=project)


def _build(name: str, backbone: Backbone, options: dict[str, Any]) -> LastBlockModel:
    config = PRESETS[name]
    if "gaussian_std" in options:
        config = replace(config, gaussian_std=float(options["gaussian_std"]))
    return LastBlockModel(backbone, name, config)


@method_options("maskclip")
def build_maskclip(backbone: Backbone) -> LastBlockModel:
    return _build("maskclip", backbone, {})


@method_options("maskclip-official")
def build_maskclip_official(backbone: Backbone) -> LastBlockModel:
    return _build("maskclip-official", backbone, {})


@method_options("sclip")
def build_sclip(backbone: Backbone) -> LastBlockModel:
    return _build("sclip", backbone, {})


@method_options("clearclip")
def build_clearclip(backbone: Backbone) -> LastBlockModel:
    return _build("clearclip", backbone, {})


@method_options("naclip", gaussian_std=Option(float, "σ of the Gaussian neighbourhood bias, in patches", above=0))
def build_naclip(backbone: Backbone, gaussian_std: float = PRESETS["naclip"].gaussian_std) -> LastBlockModel:
    """NACLIP; ``gaussian_std`` (default 5.0, NACLIP's ``--std``) may be changed for ablations."""
    return _build("naclip", backbone, {"gaussian_std": gaussian_std})
