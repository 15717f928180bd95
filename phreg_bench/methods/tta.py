"""Method ``tta``: test-time shift/flip denoising (PH-Reg Algorithm 1) around any inner method.

``build(backbone, views=10, inner="raw", shift_frac=0.15, seed=0, **inner_options)``. Every image of a
batch uses the same ``views`` views, drawn once per (seed, grid) with the training recipe (pool of 10·N
offsets, farthest-point sampling, view 0 = identity, flips p = 0.5 never on view 0), so results do not
depend on batch composition. "NACLIP w/ denoising (10×)" in PH-Reg Table S.7 is ``inner="naclip"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from torch import Tensor

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.base import DenseModel
from phreg_bench.methods.options import Option, inner_method_options, method_options
from phreg_core.tta import DEFAULT_SHIFT_FRAC, DEFAULT_VIEWS, TTADenoiser, ViewPlan, normalised_white, plan_views
from phreg_core.vit import TokenOutput


class TTAModel(DenseModel):
    """``inner`` run on ``views`` shifted/flipped views of every image, its features averaged back per patch.

    ``plan(grid)`` gives the views of every image at that patch grid (drawn once per grid from
    ``default_rng([seed, h, w])``); view 0 is the unmodified image, whose prefix tokens are returned.
    """

    def __init__(self, backbone: Backbone, inner: DenseModel, views: int, shift_frac: float, seed: int):
        config = {"views": views, "shift_frac": shift_frac, "seed": seed, "inner": inner.describe()}
        super().__init__(backbone, "tta", config)
        self.inner = inner
        self.views, self.shift_frac, self.seed = views, shift_frac, seed
        self.denoiser = TTADenoiser(self.patch_size, normalised_white(self.mean, self.std))
        self._plans: dict[tuple[int, int], ViewPlan] = {}

    def plan(self, grid: tuple[int, int]) -> ViewPlan:
        """The view plan of every image at patch grid ``grid`` (``views`` views, view 0 the identity)."""
        if grid not in self._plans:
            rng = np.random.default_rng([self.seed, grid[0], grid[1]])
            self._plans[grid] = plan_views(rng, grid, self.views, self.shift_frac)
        return self._plans[grid]

    def dense_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                     project: bool = False) -> list[TokenOutput]:
        """Every layer ``inner`` gives, each averaged over the views: ``patches`` ``[B, C, h, w]`` in the images'
        dtype, ``prefix`` ``[B, P, C]`` from view 0. All ``B·views`` views go through ``inner`` in one batch.
        Shapes: :meth:`DenseModel.forward_tokens`."""
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        teacher = partial(self.inner.dense_tokens, layers=layers, project=project)
        outputs = self.denoiser(teacher, images, [self.plan(grid)] * images.shape[0])
        return [TokenOutput(patches=out.patches.to(images.dtype), prefix=out.prefix, grid=out.grid, layer=out.layer)
                for out in outputs]

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """The inner method's :meth:`DenseModel.encode_text`."""
        return self.inner.encode_text(texts)


OPTIONS = {
    "views": Option(int, "TTA views per image", minimum=1),
    "inner": Option(str, "the method run on every view (raw, naclip, ...)"),
    "shift_frac": Option(float, "largest shift as a fraction of the patch grid", minimum=0, below=1),
    "seed": Option(int, "seed of the view plan", minimum=0),
}


@method_options("tta", forward=inner_method_options("tta", "raw, naclip, ..."), **OPTIONS)
def build(backbone: Backbone, views: int = DEFAULT_VIEWS, inner: str = "raw", shift_frac: float = DEFAULT_SHIFT_FRAC,
          seed: int = 0, **inner_options: Any) -> DenseModel:
    from phreg_bench.methods.catalogue import METHODS

    inner_model = METHODS.get(inner)(backbone, **inner_options)
    return TTAModel(backbone, inner_model, int(views), float(shift_frac), int(seed))
