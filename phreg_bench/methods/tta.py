"""Method ``tta``: test-time shift/flip denoising (PH-Reg Algorithm 1) around any inner method.

``build(backbone, views=10, inner="raw", shift_frac=0.15, seed=0, **inner_options)``. Every image of a
batch uses the same ``views`` views, drawn once per (seed, grid) with the training recipe (pool of 10·N
offsets, farthest-point sampling, view 0 = identity, flips p = 0.5 never on view 0), so results do not
depend on batch composition. "NACLIP w/ denoising (10×)" in PH-Reg Table S.7 is ``inner="naclip"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import Tensor

from phreg_bench.backbones.base import Backbone
from phreg_bench.methods.base import DenseModel
from phreg_bench.methods.options import MethodOptionError, Option, check_options, describe_options, method_options
from phreg_core.tta import DEFAULT_SHIFT_FRAC, DEFAULT_VIEWS, TTADenoiser, ViewPlan, normalised_white, plan_views
from phreg_core.vit import TokenOutput


class TTAModel(DenseModel):
    def __init__(self, backbone: Backbone, inner: DenseModel, views: int, shift_frac: float, seed: int):
        config = {"views": views, "shift_frac": shift_frac, "seed": seed, "inner": inner.describe()}
        super().__init__(backbone, "tta", config)
        self.inner = inner
        self.views, self.shift_frac, self.seed = views, shift_frac, seed
        self.fill = normalised_white(backbone.mean, backbone.std)
        self._plans: dict[tuple[int, int], ViewPlan] = {}

    def plan(self, grid: tuple[int, int]) -> ViewPlan:
        if grid not in self._plans:
            rng = np.random.default_rng([self.seed, grid[0], grid[1]])
            self._plans[grid] = plan_views(rng, grid, self.views, self.shift_frac)
        return self._plans[grid]

    def forward_tokens(self, images: Tensor, *, project: bool = True) -> TokenOutput:
        patch = self.backbone.info.patch_size
        grid = (images.shape[-2] // patch, images.shape[-1] // patch)
        plan = self.plan(grid)
        captured: dict[str, Tensor] = {}

        def teacher(views: Tensor) -> Tensor:
            out = self.inner.forward_tokens(views, project=project)
            captured["prefix"] = out.prefix
            return out.patches

        denoiser = TTADenoiser(teacher, patch, self.fill, self.views, self.shift_frac)
        target = denoiser(images, [plan] * images.shape[0]).to(images.dtype)
        prefix = captured["prefix"][:: self.views]  # view 0 of every image is the unmodified image
        return TokenOutput(patches=target, prefix=prefix, grid=grid)

    def encode_text(self, texts):
        return self.inner.encode_text(texts)


def _inner_options(given: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    """Check the options ``tta`` does not take as options of its inner method (named as ``tta``'s)."""
    from phreg_bench.registries import METHODS

    inner = given.get("inner", "raw")
    if METHODS.canonical(inner) == "tta":
        raise MethodOptionError("method 'tta' cannot wrap itself; choose another inner method (raw, naclip, ...)")
    factory = METHODS.get(inner)
    schema = getattr(factory, "option_schema", None)
    if schema is None:
        return rest
    unknown = sorted(set(rest) - set(schema))
    if unknown:
        raise MethodOptionError(
            f"method 'tta' has no option {', '.join(map(repr, unknown))}; it takes "
            f"{describe_options(build.option_schema)}, "
            f"and the options of its inner method {inner!r}: {describe_options(schema)}")
    return check_options(f"tta (inner {inner})", schema, rest, getattr(factory, "option_forward", None))


OPTIONS = {
    "views": Option(int, "TTA views per image", minimum=1),
    "inner": Option(str, "the method run on every view (raw, naclip, ...)"),
    "shift_frac": Option(float, "largest shift as a fraction of the patch grid", minimum=0, below=1),
    "seed": Option(int, "seed of the view plan", minimum=0),
}


@method_options("tta", forward=_inner_options, **OPTIONS)
def build(backbone: Backbone, views: int = DEFAULT_VIEWS, inner: str = "raw", shift_frac: float = DEFAULT_SHIFT_FRAC,
          seed: int = 0, **inner_options: Any) -> DenseModel:
    from phreg_bench.registries import METHODS

    inner_model = METHODS.get(inner)(backbone, **inner_options)
    return TTAModel(backbone, inner_model, int(views), float(shift_frac), int(seed))
