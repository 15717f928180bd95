"""One token-level view of any ViT: the seam that backbones, methods and the student share.

A :class:`TokenViT` exposes a pre-trained ViT (timm, open_clip or third party) as a fixed sequence of
steps — patch embedding with positional embeddings resampled to any grid (with the wrapper's named
``pos_resample`` policy, :mod:`phreg_core.pos_embed`), optional extra register
tokens, the transformer blocks, the final norm and an optional projection — so that

* every backbone returns patch tokens as a ``[B, C, h, w]`` grid, with prefix tokens (CLS, registers)
  kept apart and never mixed with patches;
* a training-free method can swap the last block for a parameterised variant (see ``last_block``);
* the PH-Reg student can insert new register tokens without forking the model's code.

Blocks other than the replaced last one run through the model's own modules, so fused attention kernels
and the original numerics are kept.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from phreg_core.errors import ConfigError
from phreg_core.pos_embed import POLICIES, PosResample, get_policy

__all__ = [
    "BlockParts",
    "TokenLayout",
    "TokenOutput",
    "TokenViT",
    "insert_registers",
    "resample_grid_embed",
]


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in the sequence ``[B, N, C]``.

    The sequence is ``[prefix (CLS + built-in registers), patches, extra registers]`` when extra registers
    are appended (open_clip students), or ``[prefix, patches]`` with the extra registers counted inside
    the prefix when they are placed the way timm places ``reg_tokens``.
    """

    num_prefix: int
    grid: tuple[int, int]
    num_appended: int = 0

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def patch_slice(self) -> slice:
        return slice(self.num_prefix, self.num_prefix + self.num_patches)

    def split(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Split ``[B, N, C]`` into patches ``[B, C, h, w]`` and the non-patch tokens ``[B, P, C]``."""
        batch, _, channels = tokens.shape
        patches = tokens[:, self.patch_slice]
        others = torch.cat([tokens[:, : self.num_prefix], tokens[:, self.num_prefix + self.num_patches :]], 1)
        grid = patches.transpose(1, 2).reshape(batch, channels, *self.grid)
        return grid, others


@dataclass
class TokenOutput:
    """Dense output of one layer: patch grid, prefix tokens (CLS then registers), and the grid size."""

    patches: Tensor  # [B, C, h, w]
    prefix: Tensor  # [B, P, C]: CLS (if any), then every register token
    grid: tuple[int, int]
    layer: int = -1


@dataclass
class BlockParts:
    """Structured access to one pre-norm transformer block, for last-block surgery.

    ``qkv`` maps normalised tokens ``[B, N, C]`` to ``q, k, v`` of shape ``[B, heads, N, head_dim]`` (with
    any q/k norm of the model applied); ``out_proj`` maps ``[B, N, C]`` back. ``ls1``/``ls2`` are the
    layer-scale branches (identity where the model has none).
    """

    norm1: Callable[[Tensor], Tensor]
    qkv: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    out_proj: Callable[[Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    num_heads: int
    ls1: Callable[[Tensor], Tensor] = nn.Identity()
    ls2: Callable[[Tensor], Tensor] = nn.Identity()


def resample_grid_embed(pos: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                        policy: str | PosResample) -> Tensor:
    """Resample patch positional embeddings ``[1, h*w, C]`` to a new grid with a named policy.

    ``policy`` is a name from :data:`phreg_core.pos_embed.POLICIES` (or a :class:`PosResample`); there is
    no default because each reference codebase resamples differently (see :mod:`phreg_core.pos_embed`).
    """
    return get_policy(policy)(pos, src_grid, dst_grid)


def insert_registers(
    tokens: Tensor, layout: TokenLayout, registers: Tensor, placement: str
) -> tuple[Tensor, TokenLayout]:
    """Add register tokens ``[R, C]`` to a sequence, without positional embedding.

    ``placement="append"`` puts them after the patches (PH-Reg's open_clip student: ``[CLS, patches,
    regs]``); ``"prefix"`` puts them right after the existing prefix (timm's ``reg_tokens`` layout:
    ``[CLS, regs, patches]``).
    """
    batch = tokens.shape[0]
    regs = registers.to(tokens.dtype).unsqueeze(0).expand(batch, -1, -1)
    if placement == "append":
        out = torch.cat([tokens, regs], dim=1)
        return out, TokenLayout(layout.num_prefix, layout.grid, layout.num_appended + regs.shape[1])
    if placement == "prefix":
        cut = layout.num_prefix
        out = torch.cat([tokens[:, :cut], regs, tokens[:, cut:]], dim=1)
        return out, TokenLayout(cut + regs.shape[1], layout.grid, layout.num_appended)
    raise ConfigError(f"unknown register placement {placement!r}; use 'append' or 'prefix'")


LastBlockFn = Callable[[BlockParts, Tensor, TokenLayout], Tensor]


class TokenViT(nn.Module):
    """Uniform token-level access to a ViT. Subclasses wrap one model family.

    Subclasses set ``patch_size``, ``embed_dim``, ``num_heads``, ``native_grid``, ``num_prefix_tokens``
    (CLS + built-in registers), ``num_builtin_registers``, ``has_class_token``, ``output_dim``
    (``embed_dim`` or the projection's width), ``register_placement``, ``mean``/``std`` (floats, for images
    in [0, 1]), ``interpolation`` (of the weights' preprocessing resize), ``pos_resample``
    (a policy of :mod:`phreg_core.pos_embed`: how ``embed`` resamples the position table to other grids,
    through :meth:`resample_pos`) and implement the abstract methods. ``blocks`` must be the model's own
    ``nn.ModuleList``.
    """

    patch_size: int
    embed_dim: int
    num_heads: int
    native_grid: tuple[int, int]
    num_prefix_tokens: int
    num_builtin_registers: int = 0
    has_class_token: bool = True
    output_dim: int
    register_placement: str = "prefix"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    pos_resample: PosResample | None = None  # no default: every TokenViT must say which reference it follows
    blocks: nn.ModuleList

    # -- steps a family implements ------------------------------------------------------------------
    @abstractmethod
    def embed(self, images: Tensor) -> tuple[Tensor, TokenLayout]:
        """Patch-embed ``[B, 3, H, W]`` and add (resampled) positional embeddings and prefix tokens.

        Returns the sequence *before* the pre-norm (``ln_pre``/``norm_pre``) and its layout.
        """

    @abstractmethod
    def norm_pre(self, tokens: Tensor) -> Tensor:
        """The norm applied after embedding (``ln_pre``), identity for most timm models."""

    @abstractmethod
    def block_parts(self, index: int) -> BlockParts:
        """Structured parts of block ``index`` (negative indices count from the end)."""

    @abstractmethod
    def final_norm(self, tokens: Tensor) -> Tensor:
        """The final norm (``ln_post`` / ``norm``)."""

    def project(self, tokens: Tensor) -> Tensor:
        """Map normalised tokens to the output space (CLIP's ``proj``); identity by default."""
        return tokens

    @property
    def has_projection(self) -> bool:
        return self.output_dim != self.embed_dim

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def native_resolution(self) -> tuple[int, int]:
        """``(height, width)`` in pixels of ``native_grid``, the grid the position table is stored at."""
        return self.native_grid[0] * self.patch_size, self.native_grid[1] * self.patch_size

    def set_pos_resample(self, policy: str | PosResample) -> TokenViT:
        """Use another resampling policy (a name of :data:`phreg_core.pos_embed.POLICIES`); returns ``self``."""
        self.pos_resample = get_policy(policy)
        return self

    def resample_pos(self, pos: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch positional embeddings ``[1, h*w, C]`` stored at ``native_grid``, resampled to ``grid``."""
        if self.pos_resample is None:
            raise TypeError(f"{type(self).__name__} declares no positional-embedding resampling policy; set "
                            "`pos_resample = phreg_core.pos_embed.get_policy(NAME)` on the TokenViT class "
                            f"(names: {', '.join(sorted(POLICIES))})")
        return self.pos_resample(pos, tuple(self.native_grid), tuple(grid))

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"input {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize or pad the image first"
            )
        return height // self.patch_size, width // self.patch_size

    # -- the shared forward -------------------------------------------------------------------------
    def forward_tokens(
        self,
        images: Tensor,
        layers: Sequence[int] = (-1,),
        *,
        registers: Tensor | None = None,
        register_placement: str | None = None,
        last_block: LastBlockFn | None = None,
        final_norm: bool = True,
        project: bool = False,
    ) -> list[TokenOutput]:
        """Dense outputs of the requested blocks, one :class:`TokenOutput` per entry of ``layers``, in that order.

        This is the dense-feature contract every layer shares (``Backbone``, ``DenseModel`` and every method,
        ``Student``): ``forward_tokens(images, layers=(-1,), *, project=False) -> list[TokenOutput]``.

        ``images`` ``[B, 3, H, W]`` are normalised with the wrapper's ``mean``/``std``; ``H`` and ``W`` must
        be multiples of ``patch_size`` (else :class:`ConfigError`). ``layers`` are block indices in
        ``[-depth, depth)`` (negative counts from the end; ``-1`` is the last block), any order, repeats
        allowed; an empty or out-of-range entry raises :class:`ConfigError`. Each output has ``patches``
        ``[B, C, h, w]`` with ``(h, w) = (H, W) / patch_size``, ``prefix`` ``[B, P, C]`` (CLS if any, built-in
        registers, then any inserted ``registers``), ``grid = (h, w)`` and ``layer`` in ``[0, depth)``.
        ``C`` is ``embed_dim``, or ``output_dim`` with ``project``.

        ``project`` (default ``False``; only with ``final_norm``) maps every returned layer through the CLIP
        projection into the joint image-text space: open-vocabulary callers pass ``project=True``, probes keep
        the final-normalised ``embed_dim`` tokens. ``final_norm`` applies the final norm to every returned
        layer. Method hooks: ``registers`` ``[R, C]`` are inserted after embedding (before ``norm_pre``) at
        ``register_placement`` (default: the wrapper's; test-time registers append); ``last_block``
        replaces the final block (training-free methods, PH-Reg's MaskCLIP student).
        """
        depth = self.depth
        if not layers:
            raise ConfigError("forward_tokens needs at least one layer index (layers=(-1,) is the last block)")
        outside = [layer for layer in layers if not -depth <= int(layer) < depth]
        if outside:
            raise ConfigError(f"layers {outside} do not exist: this ViT has {depth} blocks (indices "
                              f"{-depth}..{depth - 1})")
        wanted = sorted({layer % depth for layer in layers})
        self.grid_for(images.shape[-2], images.shape[-1])  # refuses sizes that are not patch multiples
        tokens, layout = self.embed(images)
        if registers is not None:
            placement = register_placement or self.register_placement
            tokens, layout = insert_registers(tokens, layout, registers, placement)
        tokens = self.norm_pre(tokens)
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks):
            if index > wanted[-1]:
                break
            if index == depth - 1 and last_block is not None:
                tokens = last_block(self.block_parts(index), tokens, layout)
            else:
                tokens = block(tokens)
            if index in wanted:
                outputs[index] = tokens
        results = []
        for layer in layers:
            out = outputs[layer % depth]
            if final_norm:
                out = self.final_norm(out)
                if project:
                    out = self.project(out)
            patches, others = layout.split(out)
            results.append(TokenOutput(patches=patches, prefix=others, grid=layout.grid, layer=layer % depth))
        return results

    def forward(self, images: Tensor) -> Tensor:
        """Final normalised (and, for CLIP, projected) patch grid ``[B, C', h, w]``."""
        return self.forward_tokens(images, project=True)[0].patches

