"""The method registry ``METHODS`` and its built-in entries (declared lazily; each target is
``factory(backbone, **options) -> DenseModel``, checked by the registry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from phreg_bench.registry import Registry

if TYPE_CHECKING:
    from phreg_bench.methods.base import DenseModel

METHODS: Registry[Callable[..., DenseModel]] = Registry(
    "method", "phreg_bench.methods", makes="phreg_bench.methods.base:DenseModel")

METHODS.add("raw", "phreg_bench.methods.base:build_raw", aliases=("none", "clip", "vanilla"),
            summary="the backbone as it is (no method)")
for _name, _summary in {
    "maskclip": "value path, no residual, no FFN (PH-Reg / ClearCLIP definition of MaskCLIP)",
    "maskclip-official": "value path keeping residual and FFN (MaskCLIP ECCV'22 code)",
    "sclip": "q-q + k-k correlative attention, residual and FFN kept (SCLIP ECCV'24)",
    "clearclip": "q-q attention, no residual, no FFN (ClearCLIP ECCV'24)",
    "naclip": "k-k attention + Gaussian neighbourhood bias, sigma 5, reduced block (NACLIP WACV'25)",
}.items():
    METHODS.add(_name, f"phreg_bench.methods.training_free:build_{_name.replace('-', '_')}", summary=_summary)
METHODS.add("tta", "phreg_bench.methods.tta:build",
            summary="test-time shift/flip denoising with N views around an inner method (PH-Reg's denoised "
                    "teacher target, arXiv:2505.21501)",
            citation="arXiv:2505.21501")
METHODS.add("phreg", "phreg_bench.methods.phreg:build", aliases=("ph-reg",),
            summary="PH-Reg student: distilled registers loaded from an adapter file (Vision Transformers with "
                    "Self-Distilled Registers, arXiv:2505.21501)",
            citation="arXiv:2505.21501")
METHODS.add("dvt", "phreg_bench.methods.dvt:build", aliases=("denoising-vit",),
            summary="DVT stage-2 denoiser: one transformer block + learned positional table on the final features, "
                    "from released weights (-o denoiser=FILE); Yang et al., Denoising Vision Transformers, ECCV 2024",
            citation="Yang, Luo, Li, Deng, Guibas, Krishnan, Weinberger, Tian, Wang. Denoising Vision Transformers. "
                     "ECCV 2024. arXiv:2401.02957; code github.com/Jiawei-Yang/Denoising-ViT (MIT)")
METHODS.add("ttr", "phreg_bench.methods.ttr:build", aliases=("test-time-registers",),
            summary="test-time registers: register neurons moved onto one appended zero token, training-free "
                    "(Jiang et al., NeurIPS'25, arXiv:2506.08010); -o neurons=FILE or -o data=DIR",
            citation="arXiv:2506.08010")
