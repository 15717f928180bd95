"""Test-time-augmentation denoising of a frozen teacher (PH-Reg "Algorithm 1", code-exact).

Reference notes §1.3 (sources: ``0raiser0/PH-Reg:DINOv2_full/utils/denoising.py`` and
``CLIP/datasets/flickr30k_dataset.py``). For every image:

1. draw a pool of ``10·N`` integer patch offsets ``(dy, dx)``, uniform on ``[−s, s]`` with
   ``s = round(shift_frac · grid)``; keep ``N`` of them by farthest-point sampling; force view 0 to ``(0, 0)``;
2. draw horizontal flips with p = 0.5, never on view 0;
3. shift each view (``out[i] = in[i + off]``), fill out-of-view pixels with normalised white, then flip;
4. build the same shift/flip of a patch-coordinate map with ``−1`` for padding;
5. run every view of every image through the teacher in **one** batch;
6. scatter each view's features back to their source patches and average over the views that saw each patch
   (padding never counts). View 0 covers every patch, so every count is ≥ 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from phreg_core.errors import ConfigError
from phreg_core.recipe import Recipe
from phreg_core.vit import TokenOutput

__all__ = [
    "POOL_FACTOR",
    "TTADenoiser",
    "Teacher",
    "ViewIndex",
    "ViewPlan",
    "apply_views",
    "farthest_point_sample",
    "make_views",
    "max_shift",
    "normalised_white",
    "patch_teacher",
    "plan_views",
    "scatter_mean",
    "shift_grid",
    "view_index",
]

POOL_FACTOR = 10  # pool of counts*10 candidate offsets (PH-Reg utils/denoising.py `prepare_all_offsets`)
# the paper's N = 10 views and 0.15 shift fraction, defined once with their sources in phreg_core.recipe.Recipe
DEFAULT_VIEWS: int = Recipe.default("views")
DEFAULT_SHIFT_FRAC: float = Recipe.default("shift_frac")

# normalised views [V, 3, H, W] -> one TokenOutput per layer (patches [V, C, h, w], prefix [V, P, C]): the
# dense-feature contract of phreg_core.vit.TokenViT.forward_tokens with its layers bound
Teacher = Callable[[Tensor], Sequence[TokenOutput]]


@dataclass(frozen=True)
class ViewPlan:
    """The augmentation of one image: ``offsets`` ``[N, 2]`` (dy, dx in patches) and ``flips`` ``[N]``."""

    offsets: np.ndarray
    flips: np.ndarray

    @property
    def num_views(self) -> int:
        return len(self.offsets)

    def to_list(self) -> list[list[int]]:
        """``[[dy, dx, flip], ...]``: a stable, hashable description (cache keys, logs)."""
        return [[int(dy), int(dx), int(f)] for (dy, dx), f in zip(self.offsets, self.flips, strict=True)]


def max_shift(grid: int, shift_frac: float = DEFAULT_SHIFT_FRAC) -> int:
    """``int(round(shift_frac · grid))`` patches: 4 for a 28-patch CLIP grid, 6 for DINOv2's 37."""
    return int(round(shift_frac * grid))


def farthest_point_sample(points: np.ndarray, count: int, first: int) -> np.ndarray:
    """Indices of ``count`` points chosen by farthest-point sampling on squared distance, from ``first``.

    Each step picks the point whose squared distance to the chosen set is largest (first such index on
    ties), as ``farthest_point_sample`` in PH-Reg's ``utils/denoising.py``.
    """
    points = np.asarray(points, dtype=np.float64)
    chosen = np.zeros(count, dtype=np.int64)
    distance = np.full(len(points), np.inf)
    current = int(first)
    for i in range(count):
        chosen[i] = current
        distance = np.minimum(distance, ((points - points[current]) ** 2).sum(-1))
        current = int(np.argmax(distance))
    return chosen


def plan_views(
    rng: np.random.Generator,
    grid: tuple[int, int],
    num_views: int = DEFAULT_VIEWS,
    shift_frac: float = DEFAULT_SHIFT_FRAC,
) -> ViewPlan:
    """Draw the offsets and flips of one image (pool of ``10·N``, FPS, view 0 = identity, no flip)."""
    if num_views < 1:
        raise ConfigError(f"num_views must be >= 1, got {num_views}")
    shift_h, shift_w = max_shift(grid[0], shift_frac), max_shift(grid[1], shift_frac)
    pool_size = POOL_FACTOR * num_views
    pool_dy = rng.integers(-shift_h, shift_h, size=pool_size, endpoint=True)
    pool_dx = rng.integers(-shift_w, shift_w, size=pool_size, endpoint=True)
    pool = np.stack([pool_dy, pool_dx], axis=1)
    flips = rng.integers(0, 2, num_views)  # Bernoulli(0.5) per view (code `prepare_flip`)
    flips[0] = 0
    chosen = farthest_point_sample(pool, num_views, first=int(rng.integers(0, pool_size)))
    offsets = pool[chosen].astype(np.int64)
    offsets[0] = (0, 0)  # view 0 is the unmodified image: every patch is covered (paper App. B.3)
    return ViewPlan(offsets=offsets, flips=flips.astype(bool))


def shift_grid(tensor: Tensor, dy: int, dx: int, fill: float | Tensor) -> Tensor:
    """``out[..., i, j] = in[..., i + dy, j + dx]``; positions with no source get ``fill``.

    ``fill`` is a scalar or a per-channel tensor broadcastable to ``tensor[..., :1, :1]``.
    """
    height, width = tensor.shape[-2:]
    out = torch.empty_like(tensor)
    out[...] = torch.as_tensor(fill, dtype=tensor.dtype, device=tensor.device)
    src_h = slice(max(0, dy), min(height, height + dy))
    src_w = slice(max(0, dx), min(width, width + dx))
    dst_h = slice(max(0, dy) - dy, min(height, height + dy) - dy)
    dst_w = slice(max(0, dx) - dx, min(width, width + dx) - dx)
    out[..., dst_h, dst_w] = tensor[..., src_h, src_w]
    return out


def normalised_white(mean: Sequence[float], std: Sequence[float]) -> tuple[float, float, float]:
    """White (pixel value 1) after normalisation, ``(1 − mean) / std``.

    CLIP's statistics give (1.93033625, 2.07488384, 2.14589699), the constant in PH-Reg's CLIP dataset code.
    """
    return tuple((1.0 - m) / s for m, s in zip(mean, std, strict=True))  # type: ignore[return-value]


def _source_index(length: int, offsets: Tensor, flips: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-view source positions ``[V, length]`` of ``shift(offset)`` then (optionally) ``flip``, and validity."""
    position = torch.arange(length).view(1, -1)
    if flips is not None:  # flipping after the shift reads the shifted image at length-1-j
        position = torch.where(flips.view(-1, 1), length - 1 - position, position)
    source = position + offsets.view(-1, 1)
    return source.clamp(0, length - 1), (source >= 0) & (source < length)


@dataclass
class ViewIndex:
    """Where every pixel and patch of every view comes from (built on the CPU, moved in one go).

    ``owner`` ``[V]`` image of each view; ``rows``/``cols`` ``[V, H]``/``[V, W]`` source pixel rows/columns
    and ``row_ok``/``col_ok`` their validity; ``coords`` ``[V, 2, h, w]`` source patch of each view token
    (``−1`` for padding).
    """

    owner: Tensor
    rows: Tensor
    cols: Tensor
    row_ok: Tensor
    col_ok: Tensor
    coords: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewIndex:
        return ViewIndex(*(t.to(device, non_blocking=non_blocking) for t in self.tensors()))

    def pin_memory(self) -> ViewIndex:
        return ViewIndex(*(t.pin_memory() for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, ...]:
        return self.owner, self.rows, self.cols, self.row_ok, self.col_ok, self.coords


def view_index(plans: Sequence[ViewPlan], patch_size: int, height: int, width: int) -> ViewIndex:
    """The gather indices of shift-then-flip views and their patch-coordinate maps (CPU tensors)."""
    grid = (height // patch_size, width // patch_size)
    if grid[0] * patch_size != height or grid[1] * patch_size != width:
        raise ConfigError(f"images {height}x{width} are not a multiple of the patch size {patch_size}")
    offsets = torch.as_tensor(np.concatenate([p.offsets for p in plans]), dtype=torch.long)
    flips = torch.as_tensor(np.concatenate([p.flips for p in plans]), dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(len(plans)), torch.as_tensor([p.num_views for p in plans]))
    rows, row_ok = _source_index(height, offsets[:, 0] * patch_size, None)
    cols, col_ok = _source_index(width, offsets[:, 1] * patch_size, flips)
    prow, prow_ok = _source_index(grid[0], offsets[:, 0], None)
    pcol, pcol_ok = _source_index(grid[1], offsets[:, 1], flips)
    patch_ok = prow_ok.view(-1, grid[0], 1) & pcol_ok.view(-1, 1, grid[1])
    coords = torch.stack([prow.view(-1, grid[0], 1).expand(-1, -1, grid[1]),
                          pcol.view(-1, 1, grid[1]).expand(-1, grid[0], -1)], dim=1)
    coords = torch.where(patch_ok.unsqueeze(1), coords, torch.full_like(coords, -1))
    return ViewIndex(owner, rows, cols, row_ok, col_ok, coords)


def apply_views(images: Tensor, index: ViewIndex, fill: Sequence[float]) -> Tensor:
    """Gather all views ``[V, 3, H, W]`` of ``images`` (``index`` on the images' device); padding = ``fill``."""
    height, width = images.shape[-2:]
    gathered = images[index.owner.view(-1, 1, 1), :, index.rows.view(-1, height, 1), index.cols.view(-1, 1, width)]
    valid = (index.row_ok.view(-1, height, 1) & index.col_ok.view(-1, 1, width)).unsqueeze(-1)  # [V, H, W, 1]
    fill_t = torch.stack([torch.full((), float(v), dtype=images.dtype, device=images.device) for v in fill])
    return torch.where(valid, gathered, fill_t).permute(0, 3, 1, 2).contiguous()


def make_views(
    images: Tensor, plans: Sequence[ViewPlan], patch_size: int, fill: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """Build all views ``[B·N, 3, H, W]`` (image-major) and their coordinate maps ``[B·N, 2, h, w]``.

    Shift first (``out[i] = in[i + off]``, out-of-view pixels = ``fill``), then flip, for both the pixels
    and the patch-coordinate map (whose padding is ``−1``): one gather for all views, equal to applying
    :func:`shift_grid` and ``flip`` view by view.
    """
    if len(plans) != images.shape[0]:
        raise ValueError(f"{len(plans)} view plans for {images.shape[0]} images")
    index = view_index(plans, patch_size, *images.shape[-2:])
    if images.device.type == "cuda":
        index = index.pin_memory()
    index = index.to(images.device, non_blocking=True)
    return apply_views(images, index, fill), index.coords


def scatter_mean(features: Tensor, coords: Tensor, plans: Sequence[ViewPlan]) -> tuple[Tensor, Tensor]:
    """Map view features back to their source patches and average over the views that saw them.

    ``features`` ``[V, C, h, w]`` and ``coords`` ``[V, 2, h, w]`` of the views of ``plans`` (image-major:
    image ``i`` owns ``plans[i].num_views`` consecutive views; ``V`` is their sum). Returns the target
    ``[B, C, h, w]`` (float32, ``B = len(plans)``) and the per-patch view counts ``[B, h, w]``. Tokens whose
    source is padding (either coordinate ``−1``) are dropped; patches seen by no view (impossible when view
    0 is the identity) get 0.
    """
    total, channels, height, width = features.shape
    views_per_image = [p.num_views for p in plans]  # counted on the host: no device sync on the step's path
    if sum(views_per_image) != total:
        raise ValueError(f"{total} view features for plans of {sum(views_per_image)} views")
    batch = len(plans)
    cells = batch * height * width
    valid = (coords >= 0).all(1)  # [V, h, w]
    image_index = torch.repeat_interleave(torch.arange(batch, device=features.device),
                                          torch.as_tensor(views_per_image, device=features.device),
                                          output_size=total).view(-1, 1, 1)
    flat_dst = (image_index * height + coords[:, 0].clamp(min=0)) * width + coords[:, 1].clamp(min=0)
    dst = torch.where(valid, flat_dst, cells).flatten()  # padding goes to a spare row that is dropped
    src = features.permute(0, 2, 3, 1).reshape(-1, channels).float()
    sums = torch.zeros(cells + 1, channels, device=features.device, dtype=torch.float32).index_add_(0, dst, src)
    counts = torch.zeros(cells + 1, device=features.device, dtype=torch.float32)
    counts.index_add_(0, dst, torch.ones_like(dst, dtype=torch.float32))
    sums, counts = sums[:cells], counts[:cells]
    mean = sums / counts.clamp(min=1).unsqueeze(1)
    target = mean.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
    return target, counts.view(batch, height, width)


def patch_teacher(features: Callable[[Tensor], Tensor]) -> Teacher:
    """A :data:`Teacher` from a callable that gives patch features ``[V, C, h, w]`` only (no prefix tokens:
    the outputs' ``prefix`` is ``[V, 0, C]``), e.g. :func:`phreg_core.teacher.default_teacher`."""

    def teacher(views: Tensor) -> list[TokenOutput]:
        patches = features(views)
        prefix = patches.new_empty(patches.shape[0], 0, patches.shape[1])
        return [TokenOutput(patches=patches, prefix=prefix, grid=tuple(patches.shape[-2:]))]

    return teacher


class TTADenoiser:
    """Denoised teacher outputs: ``denoiser(teacher, images, plans) -> list[TokenOutput]``.

    ``patch_size`` is the teacher's; ``fill`` the normalised white of its preprocessing (see
    :func:`normalised_white`). The number of views of each image is its plan's (:attr:`ViewPlan.num_views`).
    """

    def __init__(self, patch_size: int, fill: Sequence[float]):
        self.patch_size = patch_size
        self.fill = tuple(float(v) for v in fill)

    def __call__(self, teacher: Teacher, images: Tensor, plans: Sequence[ViewPlan],
                 index: ViewIndex | None = None) -> list[TokenOutput]:
        """Run ``teacher`` once on every view of normalised ``images`` ``[B, 3, H, W]`` (``plans[i]`` for image
        ``i``; view 0 of every plan must be the identity, as :func:`plan_views` makes it).

        Returns one :class:`TokenOutput` per teacher output (per layer): ``patches`` ``[B, C, h, w]`` float32,
        the mean over the views that saw each patch; ``prefix`` ``[B, P, C]`` the teacher's prefix tokens on
        view 0 (the unmodified image), in the teacher's dtype. ``index`` (from :func:`view_index`, on the
        images' device) may be prepared ahead, off the GPU's path.
        """
        if any(p.offsets[0].any() or p.flips[0] for p in plans):
            raise ConfigError("TTA view plans must start with the identity view (offset (0, 0), no flip): "
                              "it covers every patch and gives the prefix tokens")
        if index is None:
            views, coords = make_views(images, plans, self.patch_size, self.fill)
        else:
            views, coords = apply_views(images, index, self.fill), index.coords
        first = torch.as_tensor(np.cumsum([0] + [p.num_views for p in plans[:-1]]), device=images.device)
        outputs = []
        for out in teacher(views):  # one pass over all views (code: [B·10, 3, R, R])
            if out.patches.shape[-2:] != coords.shape[-2:]:
                raise ValueError(f"teacher returned a {tuple(out.patches.shape[-2:])} grid for "
                                 f"{tuple(coords.shape[-2:])}-patch views; its patch size is not {self.patch_size}")
            target, _ = scatter_mean(out.patches.float(), coords, plans)
            outputs.append(TokenOutput(patches=target, prefix=out.prefix[first], grid=out.grid, layer=out.layer))
        return outputs
