"""Named positional-embedding resampling policies: each name is one exact ``F.interpolate`` call.

A ViT trained at one grid (OpenAI CLIP-B/16: 14×14 at 224 px; DINOv2: 37×37 at 518 px) is run at other
grids by resampling its learned position table. The reference codebases do this in three different ways,
and the choice changes the dense features by several percent (relative) at 448 px, so a benchmark that
wants the official numbers must use the reference's own call, and must record which one it used:

==========================  =================================================================================
``bicubic-offset``          ``F.interpolate(t, scale_factor=((H + 0.1) / h, (W + 0.1) / w), mode="bicubic",
                            align_corners=False)`` — the DINO (v1) trick. NACLIP, SCLIP, ClearCLIP and the
                            PH-Reg CLIP teacher/student, Meta's DINOv2 hub models without registers, and
                            Hugging Face ``Dinov2Model`` up to the 4.4x releases (PH-Reg pins 4.37.2).
``bicubic-antialias``       ``F.interpolate(t, size=(H, W), mode="bicubic", align_corners=False,
                            antialias=True)`` — timm's ``resample_abs_pos_embed`` (its ``dynamic_img_size``
                            forward), open_clip's ``resize_pos_embed`` and Meta's DINOv2 ``*_reg`` hub models.
``bicubic``                 ``F.interpolate(t, size=(H, W), mode="bicubic", align_corners=False)`` — MaskCLIP
                            (ECCV'22, mmseg ``resize_pos_embed``), the first PH-Reg CLIP student
                            (``clip_reg.py``), newer Hugging Face ``Dinov2Model``; phreg-bench before policies.
==========================  =================================================================================

``t`` is the patch part of the table as ``[1, C, h, w]``; ``(h, w)`` the stored grid, ``(H, W)`` the
input's grid (rows, columns). Prefix rows (CLS, registers) are never resampled. The native grid returns
the table unchanged under every policy (every reference short-cuts it). Resampling runs in float32 for
half-precision tables (timm, DINOv2 and Hugging Face do the same) and the result is cast back.

Notes on the references (all checked in their source):

* NACLIP/SCLIP/ClearCLIP name the input's *height* ``w`` (``B, nc, w, h = x.shape``), so their
  ``scale_factor=(w0 / sqrt(N), h0 / sqrt(N))`` is (rows, columns), as here.
* ``recompute_scale_factor=False`` (PH-Reg's ``augNaCLIP``/``student_CLIP.py``) and the default ``None`` give
  the same result when a scale factor is passed: the kernel maps coordinates with the given factor.
* With the +0.1 offset the output size is ``floor(h · (H + 0.1) / h) = H``; the references assert it, and so
  does :meth:`PosResample.__call__`.

torch is imported by the two resampling calls, not at import: the command line lists the policy names
(``--pos-resample`` choices, ``phreg-bench --help``) without loading torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from phreg_core.errors import PhregError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["POLICIES", "POLICY_NAMES", "PosResample", "PosResampleError", "get_policy", "resample_table"]

DINO_OFFSET = 0.1  # facebookresearch/dino issue #8: "add a small number to avoid floating point error"


class PosResampleError(PhregError, ValueError):
    """An unknown policy name, or a resampling that cannot give the requested grid."""


@dataclass(frozen=True)
class PosResample:
    """One way to resample a positional-embedding grid: ``name`` -> one exact ``F.interpolate`` call.

    ``by="size"`` passes ``size=(H, W)``; ``by="scale"`` passes ``scale_factor=((H + offset) / h,
    (W + offset) / w)``. ``mode`` is always ``"bicubic"`` with ``align_corners=False``.
    """

    name: str
    by: str  # "size" or "scale"
    antialias: bool
    offset: float
    summary: str
    references: tuple[str, ...]

    def interpolate_kwargs(self, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> dict[str, object]:
        """The keyword arguments of the ``F.interpolate`` call for ``src_grid -> dst_grid`` (for records/tests)."""
        kwargs: dict[str, object] = {"mode": "bicubic", "align_corners": False, "antialias": self.antialias}
        if self.by == "size":
            kwargs["size"] = (int(dst_grid[0]), int(dst_grid[1]))
        else:
            kwargs["scale_factor"] = ((dst_grid[0] + self.offset) / src_grid[0],
                                      (dst_grid[1] + self.offset) / src_grid[1])
        return kwargs

    def __call__(self, pos: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
        """Resample patch positional embeddings ``[1, h*w, C]`` (row-major) to ``[1, H*W, C]``.

        Raises :class:`PosResampleError` if the table does not hold ``h*w`` rows or the call does not give
        the ``H×W`` grid.
        """
        import torch
        import torch.nn.functional as F

        src = (int(src_grid[0]), int(src_grid[1]))
        dst = (int(dst_grid[0]), int(dst_grid[1]))
        if src == dst:
            return pos
        channels = pos.shape[-1]
        if pos.shape[-2] != src[0] * src[1]:
            raise PosResampleError(f"positional table has {pos.shape[-2]} patch rows, not the {src[0]}x{src[1]} "
                                   "grid it is said to hold")
        work = pos if pos.dtype in (torch.float32, torch.float64) else pos.float()
        grid = work.reshape(1, src[0], src[1], channels).permute(0, 3, 1, 2)
        out = F.interpolate(grid, **self.interpolate_kwargs(src, dst))
        if tuple(out.shape[-2:]) != dst:
            raise PosResampleError(f"policy {self.name!r} resampled {src} to {tuple(out.shape[-2:])}, not {dst}")
        return out.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], channels)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "by": self.by, "antialias": self.antialias, "offset": self.offset}


_POLICIES = (
    PosResample(
        name="bicubic-offset", by="scale", antialias=False, offset=DINO_OFFSET,
        summary="bicubic, scale_factor=(H+0.1)/h, no antialias (NACLIP/SCLIP/ClearCLIP/PH-Reg; DINOv2 hub and "
                "HF Dinov2 <=4.4x)",
        references=(
            "sinahmr/NACLIP clip/model.py VisionTransformer.interpolate_pos_encoding",
            "wangf3014/SCLIP clip/model.py VisionTransformer.interpolate_pos_encoding",
            "mc-lan/ClearCLIP open_clip/transformer.py VisionTransformer.interpolate_pos_encoding",
            "0raiser0/PH-Reg CLIP/models/augNaCLIP/model.py VisionTransformer.interpolate_pos_encoding (teacher)",
            "0raiser0/PH-Reg CLIP/zero_shot/models/student_CLIP.py StudentCLIP.interpolate_pos_encoding (student)",
            "facebookresearch/dinov2 dinov2/models/vision_transformer.py interpolate_pos_encoding "
            "(interpolate_offset=0.1, interpolate_antialias=False: hub models without registers)",
            "huggingface/transformers v4.37.2 models/dinov2/modeling_dinov2.py "
            "Dinov2Embeddings.interpolate_pos_encoding (pinned by 0raiser0/PH-Reg README)",
        )),
    PosResample(
        name="bicubic-antialias", by="size", antialias=True, offset=0.0,
        summary="bicubic, size=(H, W), antialias (timm dynamic_img_size, open_clip resize_pos_embed, DINOv2 *_reg)",
        references=(
            "huggingface/pytorch-image-models timm/layers/pos_embed.py resample_abs_pos_embed "
            "(VisionTransformer._pos_embed with dynamic_img_size=True)",
            "mlfoundations/open_clip src/open_clip/model.py resize_pos_embed",
            "facebookresearch/dinov2 dinov2/hub/backbones.py dinov2_vit*14_reg "
            "(interpolate_offset=0.0, interpolate_antialias=True)",
        )),
    PosResample(
        name="bicubic", by="size", antialias=False, offset=0.0,
        summary="bicubic, size=(H, W), no antialias (MaskCLIP/mmseg, PH-Reg clip_reg.py, HF Dinov2 >=4.4x)",
        references=(
            "chongzhou96/MaskCLIP mmseg/models/backbones/vit.py VisionTransformer.resize_pos_embed "
            "(read in its copy volgachen/MaskCLIP)",
            "0raiser0/PH-Reg models/OpenaiMaskCLIP/clip_reg.py ModifiedImageEncoder.upsampling_pos_embedding",
            "huggingface/transformers main models/dinov2/modeling_dinov2.py Dinov2Embeddings.interpolate_pos_encoding",
        )),
)

POLICIES: Mapping[str, PosResample] = MappingProxyType({policy.name: policy for policy in _POLICIES})
POLICY_NAMES: tuple[str, ...] = tuple(sorted(POLICIES))


def get_policy(policy: str | PosResample) -> PosResample:
    """The policy named ``policy`` (a :class:`PosResample` passes through).

    Raises :class:`PosResampleError` naming the option (``pos_resample`` / ``--pos-resample``) and the valid
    names.
    """
    if isinstance(policy, PosResample):
        return policy
    found = POLICIES.get(str(policy).strip()) if policy is not None else None
    if found is None:
        raise PosResampleError(f"unknown positional-embedding resampling policy {policy!r} (option pos_resample / "
                               f"--pos-resample); choose one of: {', '.join(POLICY_NAMES)}")
    return found


def resample_table(pos: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
                   policy: str | PosResample) -> Tensor:
    """Resample a whole positional table ``[1, P + h*w, C]`` or ``[P + h*w, C]``; the first ``P`` rows
    (CLS / register positions, if any) are kept as they are."""
    import torch

    resample = get_policy(policy)
    squeeze = pos.dim() == 2
    table = pos.unsqueeze(0) if squeeze else pos
    extra = table.shape[1] - src_grid[0] * src_grid[1]
    if extra < 0:
        raise PosResampleError(f"positional embedding has {table.shape[1]} rows, fewer than the {src_grid} grid")
    patches = resample(table[:, extra:], src_grid, dst_grid)
    out = torch.cat([table[:, :extra], patches], dim=1)
    return out[0] if squeeze else out
