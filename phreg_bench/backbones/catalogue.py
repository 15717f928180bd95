"""Built-in backbones (declared lazily; each target is ``factory(argument, **options) -> Backbone``).

Named entries carry their metadata (patch size, width, depth, text tower, registers, hub repo) so that
``phreg-bench ls backbones`` prints them without building a model; ``tests/test_backbones_catalogue.py``
checks every entry's metadata against the real architecture. Pass-through prefixes accept any model of
a family: ``timm:<model_name>``, ``open_clip:<arch>/<pretrained>``, ``hf-hub:<org/repo>``.

Not catalogued, on purpose: SigLIP / SigLIP 2 / PE (open_clip builds their image towers from timm with an
attention-pooling head, so there is no per-token CLIP-space projection), distilled DeiT (extra
distillation token), EVA / ViTamin (rotary or hybrid towers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phreg_bench.backbones.hub import OPEN_CLIP_FILES, TIMM_FILES
from phreg_bench.registries import BACKBONES
from phreg_bench.registry import import_target
from phreg_core.errors import ConfigError

BACKBONES.add("tiny-vit", "phreg_bench.backbones.builtin:build_tiny_vit",
              summary="built-in 4-block ViT (random init, offline); the default run's backbone",
              patch_size=8, width=64, depth=4, text=False, registers=0)

_TIMM = "phreg_bench.backbones.timm_backbones:build"
_OPEN_CLIP = "phreg_bench.backbones.open_clip_backbones:build"


@dataclass(frozen=True)
class CatalogueFactory:
    """A named entry: calls its family's factory with a fixed argument, importing it only when used.

    Hub weights are looked up before the family's library is imported, so an offline machine gets the
    "what to download" error in well under a second instead of after importing timm / open_clip.
    """

    target: str  # "module:function" of the family factory
    argument: str  # e.g. "vit_base_patch14_dinov2.lvd142m" or "ViT-B-16/openai"
    name: str
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()

    def __call__(self, argument: str | None = None, **options: Any):
        if argument:
            raise ConfigError(f"backbone {self.name!r} takes no argument (got {argument!r})")
        if self.hub_repo and not options.get("weights") and not options.get("random_init"):
            from phreg_bench.backbones.hub import fetch

            fetch(self.hub_repo, self.hub_files, what=f"weights for backbone {self.name!r}")
        options.setdefault("name", self.name)
        return import_target(self.target)(self.argument, **options)


def _add(name: str, target: str, argument: str, *, aliases: tuple[str, ...] = (), **metadata: Any) -> None:
    family = "timm" if target == _TIMM else "open_clip"
    files = TIMM_FILES if family == "timm" else OPEN_CLIP_FILES
    factory = CatalogueFactory(target, argument, name, metadata["hub"], files)
    BACKBONES.add(name, factory, aliases=aliases, family=family, argument=argument, **metadata)


# -- open_clip: plain CLIP ViTs with a text tower -------------------------------------------------------
# (name, aliases, "arch/tag", patch, width, depth, heads, resolution, hub repo, summary)
_CLIP = [
    ("openai-clip-vit-b16", ("clip-vit-b16", "clip-b16"), "ViT-B-16/openai", 16, 768, 12, 12, 224,
     "timm/vit_base_patch16_clip_224.openai", "OpenAI CLIP ViT-B/16 (PH-Reg's main backbone)"),
    ("openai-clip-vit-b32", ("clip-vit-b32", "clip-b32"), "ViT-B-32/openai", 32, 768, 12, 12, 224,
     "timm/vit_base_patch32_clip_224.openai", "OpenAI CLIP ViT-B/32"),
    ("openai-clip-vit-l14", ("clip-vit-l14", "clip-l14"), "ViT-L-14/openai", 14, 1024, 24, 16, 224,
     "timm/vit_large_patch14_clip_224.openai", "OpenAI CLIP ViT-L/14"),
    ("openai-clip-vit-l14-336", ("clip-vit-l14-336",), "ViT-L-14-336/openai", 14, 1024, 24, 16, 336,
     "timm/vit_large_patch14_clip_336.openai", "OpenAI CLIP ViT-L/14 at 336 px"),
    ("openclip-vit-b16-laion2b", ("openclip-vit-b16",), "ViT-B-16/laion2b_s34b_b88k", 16, 768, 12, 12, 224,
     "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "OpenCLIP ViT-B/16, LAION-2B (PH-Reg Table S.1)"),
    ("openclip-vit-b32-laion2b", ("openclip-vit-b32",), "ViT-B-32/laion2b_s34b_b79k", 32, 768, 12, 12, 224,
     "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "OpenCLIP ViT-B/32, LAION-2B"),
    ("openclip-vit-l14-laion2b", ("openclip-vit-l14",), "ViT-L-14/laion2b_s32b_b82k", 14, 1024, 24, 16, 224,
     "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "OpenCLIP ViT-L/14, LAION-2B"),
    ("datacomp-clip-vit-b16", (), "ViT-B-16/datacomp_xl_s13b_b90k", 16, 768, 12, 12, 224,
     "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K", "OpenCLIP ViT-B/16, DataComp-XL"),
    ("dfn-clip-vit-b16", ("dfn2b-clip-vit-b16",), "ViT-B-16/dfn2b", 16, 768, 12, 12, 224,
     "apple/DFN2B-CLIP-ViT-B-16", "DFN-2B CLIP ViT-B/16 (PH-Reg Table S.1)"),
    ("dfn-clip-vit-l14", ("dfn2b-clip-vit-l14",), "ViT-L-14/dfn2b", 14, 1024, 24, 16, 224,
     "apple/DFN2B-CLIP-ViT-L-14", "DFN-2B CLIP ViT-L/14"),
    ("metaclip-vit-b16", ("metaclip-vit-b16-2.5b",), "ViT-B-16/metaclip_fullcc", 16, 768, 12, 12, 224,
     "timm/vit_base_patch16_clip_224.metaclip_2pt5b", "MetaCLIP ViT-B/16, 2.5B pairs"),
    ("metaclip-vit-b16-400m", (), "ViT-B-16/metaclip_400m", 16, 768, 12, 12, 224,
     "timm/vit_base_patch16_clip_224.metaclip_400m", "MetaCLIP ViT-B/16, 400M pairs"),
    ("metaclip-vit-b32", ("metaclip-vit-b32-2.5b",), "ViT-B-32/metaclip_fullcc", 32, 768, 12, 12, 224,
     "timm/vit_base_patch32_clip_224.metaclip_2pt5b", "MetaCLIP ViT-B/32, 2.5B pairs"),
    ("metaclip-vit-l14", ("metaclip-vit-l14-2.5b",), "ViT-L-14/metaclip_fullcc", 14, 1024, 24, 16, 224,
     "timm/vit_large_patch14_clip_224.metaclip_2pt5b", "MetaCLIP ViT-L/14, 2.5B pairs"),
]
for _name, _aliases, _arg, _patch, _width, _depth, _heads, _res, _hub, _summary in _CLIP:
    _add(_name, _OPEN_CLIP, _arg, aliases=_aliases, patch_size=_patch, width=_width, depth=_depth, heads=_heads,
         resolution=_res, text=True, registers=0, hub=_hub, summary=_summary)

# -- timm: vision-only ViTs ------------------------------------------------------------------------------
# (name, aliases, timm model name, patch, width, depth, heads, registers, resolution, summary)
_VIT = [
    ("dinov2-vit-s14", ("dinov2-s14",), "vit_small_patch14_dinov2.lvd142m", 14, 384, 12, 6, 0, 518,
     "DINOv2 ViT-S/14"),
    ("dinov2-vit-b14", ("dinov2-b14", "dinov2"), "vit_base_patch14_dinov2.lvd142m", 14, 768, 12, 12, 0, 518,
     "DINOv2 ViT-B/14 (PH-Reg's DINOv2 backbone)"),
    ("dinov2-vit-l14", ("dinov2-l14",), "vit_large_patch14_dinov2.lvd142m", 14, 1024, 24, 16, 0, 518,
     "DINOv2 ViT-L/14"),
    ("dinov2-vit-g14", ("dinov2-g14",), "vit_giant_patch14_dinov2.lvd142m", 14, 1536, 40, 24, 0, 518,
     "DINOv2 ViT-g/14"),
    ("dinov2-vit-s14-reg4", ("dinov2-s14-reg",), "vit_small_patch14_reg4_dinov2.lvd142m", 14, 384, 12, 6, 4, 518,
     "DINOv2 ViT-S/14 with 4 registers (Darcet et al.)"),
    ("dinov2-vit-b14-reg4", ("dinov2-b14-reg", "dinov2-reg"), "vit_base_patch14_reg4_dinov2.lvd142m", 14, 768,
     12, 12, 4, 518, "DINOv2 ViT-B/14 with 4 registers (Darcet et al.)"),
    ("dinov2-vit-l14-reg4", ("dinov2-l14-reg",), "vit_large_patch14_reg4_dinov2.lvd142m", 14, 1024, 24, 16, 4,
     518, "DINOv2 ViT-L/14 with 4 registers"),
    ("dinov2-vit-g14-reg4", ("dinov2-g14-reg",), "vit_giant_patch14_reg4_dinov2.lvd142m", 14, 1536, 40, 24, 4,
     518, "DINOv2 ViT-g/14 with 4 registers"),
    ("deit-vit-t16", ("deit-tiny",), "deit_tiny_patch16_224.fb_in1k", 16, 192, 12, 3, 0, 224, "DeiT-Ti/16, IN-1k"),
    ("deit-vit-s16", ("deit-small",), "deit_small_patch16_224.fb_in1k", 16, 384, 12, 6, 0, 224, "DeiT-S/16, IN-1k"),
    ("deit-vit-b16", ("deit-base",), "deit_base_patch16_224.fb_in1k", 16, 768, 12, 12, 0, 224, "DeiT-B/16, IN-1k"),
    ("deit3-vit-s16", ("deit3-small",), "deit3_small_patch16_224.fb_in1k", 16, 384, 12, 6, 0, 224,
     "DeiT-III ViT-S/16, IN-1k"),
    ("deit3-vit-b16", ("deit3-base",), "deit3_base_patch16_224.fb_in1k", 16, 768, 12, 12, 0, 224,
     "DeiT-III ViT-B/16, IN-1k"),
    ("deit3-vit-l16", ("deit3-large",), "deit3_large_patch16_224.fb_in1k", 16, 1024, 24, 16, 0, 224,
     "DeiT-III ViT-L/16, IN-1k"),
    ("deit3-vit-b16-in21k", (), "deit3_base_patch16_224.fb_in22k_ft_in1k", 16, 768, 12, 12, 0, 224,
     "DeiT-III ViT-B/16, IN-21k pre-trained, IN-1k fine-tuned"),
    ("augreg-vit-s16", (), "vit_small_patch16_224.augreg_in21k_ft_in1k", 16, 384, 12, 6, 0, 224,
     "AugReg ViT-S/16, IN-21k -> IN-1k"),
    ("augreg-vit-b16", (), "vit_base_patch16_224.augreg_in21k_ft_in1k", 16, 768, 12, 12, 0, 224,
     "AugReg ViT-B/16, IN-21k -> IN-1k"),
    ("augreg-vit-b16-in21k", (), "vit_base_patch16_224.augreg_in21k", 16, 768, 12, 12, 0, 224,
     "AugReg ViT-B/16, IN-21k"),
    ("augreg-vit-l16", (), "vit_large_patch16_224.augreg_in21k_ft_in1k", 16, 1024, 24, 16, 0, 224,
     "AugReg ViT-L/16, IN-21k -> IN-1k"),
    ("dino-vit-s16", (), "vit_small_patch16_224.dino", 16, 384, 12, 6, 0, 224, "DINO (v1) ViT-S/16"),
    ("dino-vit-b16", (), "vit_base_patch16_224.dino", 16, 768, 12, 12, 0, 224, "DINO (v1) ViT-B/16"),
    ("mae-vit-b16", (), "vit_base_patch16_224.mae", 16, 768, 12, 12, 0, 224, "MAE ViT-B/16 (pre-trained)"),
]
for _name, _aliases, _arg, _patch, _width, _depth, _heads, _regs, _res, _summary in _VIT:
    _add(_name, _TIMM, _arg, aliases=_aliases, patch_size=_patch, width=_width, depth=_depth, heads=_heads,
         resolution=_res, text=False, registers=_regs, hub=f"timm/{_arg}", summary=_summary)

# -- pass-through prefixes -------------------------------------------------------------------------------
BACKBONES.add("timm:", _TIMM, family="timm",
              summary="any timm VisionTransformer: timm:<model_name>[.<tag>] (also timm:hf-hub:<org/repo>)")
BACKBONES.add("open_clip:", _OPEN_CLIP, family="open_clip",
              summary="any open_clip CLIP ViT: open_clip:<arch>/<pretrained tag>, e.g. open_clip:ViT-B-16/openai")
BACKBONES.add("hf-hub:", "phreg_bench.backbones.open_clip_backbones:build_hf_hub", family="hub",
              summary="a Hugging Face repo: open_clip (open_clip_config.json) or timm, e.g. "
                      "hf-hub:apple/DFN2B-CLIP-ViT-B-16")

# -- planted-artifact ViT and its twin (issue 7: the synthetic world; phreg_bench/backbones/planted.py) --------
BACKBONES.add("planted-vit", "phreg_bench.backbones.planted:build_planted_vit", family="builtin",
              summary="5-block ViT with planted register-neuron artifacts (known truth; the default run's teacher)",
              patch_size=4, width=64, depth=5, heads=4, resolution=40, text=False, registers=0)
BACKBONES.add("planted-vit-twin", "phreg_bench.backbones.planted:build_planted_twin", family="builtin",
              summary="planted-vit with the artifact mechanism off (same weights): the artifact-free reference",
              patch_size=4, width=64, depth=5, heads=4, resolution=40, text=False, registers=0)

# -- PH-Reg students: `phreg:<base>` loads a base backbone plus a distilled adapter (--adapter PATH) ---------
BACKBONES.add("phreg:", "phreg_bench.backbones.phreg:build",
              summary="the base of a PH-Reg student, named phreg:<base>; use with --adapter PATH")
