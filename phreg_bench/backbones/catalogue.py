"""The backbone registry ``BACKBONES`` and its built-in entries (declared lazily; each target is
``factory(argument=None, **options) -> Backbone``, checked by the registry).

Named entries carry their metadata (patch size, width, depth, text tower, registers, hub repo) so that
``phreg-bench ls backbones`` prints them without building a model; ``tests/test_backbones_catalogue.py``
checks every entry's metadata against the real architecture. Pass-through prefixes accept any model of
a family: ``timm:<model_name>``, ``open_clip:<arch>/<pretrained>``, ``hf-hub:<org/repo>``.

Every named entry carries the positional-embedding resampling policy (:mod:`phreg_core.pos_embed`) of the
reference code behind its family's published numbers; ``pos_resample=NAME`` (CLI ``--pos-resample``)
chooses another. Pass-through prefixes use their library's own convention.

Not catalogued, on purpose: SigLIP / SigLIP 2 / PE (open_clip builds their image towers from timm with an
attention-pooling head, so there is no per-token CLIP-space projection), distilled DeiT (extra
distillation token), EVA / ViTamin (rotary or hybrid towers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from phreg_bench.backbones.hub import OPEN_CLIP_FILES, TIMM_FILES
from phreg_bench.registry import Registry, import_target
from phreg_core.errors import ConfigError
from phreg_core.pos_embed import get_policy

if TYPE_CHECKING:
    from phreg_bench.backbones.base import Backbone

BACKBONES: Registry[Callable[..., Backbone]] = Registry(
    "backbone", "phreg_bench.backbones", makes="phreg_bench.backbones.base:Backbone")

# Policies (phreg_core/pos_embed.py). OFFSET: the OVSS repos' / DINOv2-without-registers call;
# ANTIALIAS: timm's and open_clip's own (and Meta's DINOv2 *_reg hub models); BUILTIN: built-ins as always.
OFFSET, ANTIALIAS, BUILTIN = "bicubic-offset", "bicubic-antialias", "bicubic"

BACKBONES.add("tiny-vit", "phreg_bench.backbones.builtin:build_tiny_vit",
              summary="built-in 4-block ViT (random init, offline): the quickest backbone for trying things",
              patch_size=8, width=64, depth=4, text=False, registers=0, pos_resample=BUILTIN)

_TIMM = "phreg_bench.backbones.timm_backbones:build"
_OPEN_CLIP = "phreg_bench.backbones.open_clip_backbones:build"


@dataclass(frozen=True)
class CatalogueFactory:
    """A named entry: calls its family's factory with a fixed argument, importing it only when used.

    Hub weights are fetched before the family's library is imported, so an offline machine gets the
    "what to download" error in well under a second instead of after importing timm / open_clip; the
    fetched file is handed to the family factory (``fetched=``), which does not look it up again.
    """

    target: str  # "module:function" of the family factory
    argument: str  # e.g. "vit_base_patch14_dinov2.lvd142m" or "ViT-B-16/openai"
    name: str
    hub_repo: str | None = None
    hub_files: tuple[str, ...] = ()
    pos_resample: str | None = None  # the entry's default policy (phreg_core.pos_embed); None: the family's

    def __call__(self, argument: str | None = None, *, name: str | None = None, **options: Any) -> Backbone:
        """The entry's backbone, named ``name`` (default: the entry's name); ``options`` go to the family
        factory."""
        if argument:
            raise ConfigError(f"backbone {self.name!r} takes no argument (got {argument!r})")
        policy = options.get("pos_resample") or self.pos_resample
        if policy is not None:
            options["pos_resample"] = get_policy(policy).name  # an unknown name fails before any download
        if self.hub_repo and not options.get("weights") and not options.get("random_init"):
            from phreg_bench.backbones.hub import fetch
            from phreg_bench.backbones.weights import WeightsSource

            path = fetch(self.hub_repo, self.hub_files, what=f"weights for backbone {self.name!r}")
            options["fetched"] = WeightsSource.from_hub(self.hub_repo, path)
        return import_target(self.target)(self.argument, name=name or self.name, **options)


def _add(name: str, target: str, argument: str, *, aliases: tuple[str, ...] = (), **metadata: Any) -> None:
    family = "timm" if target == _TIMM else "open_clip"
    files = TIMM_FILES if family == "timm" else OPEN_CLIP_FILES
    factory = CatalogueFactory(target, argument, name, metadata["hub"], files, metadata["pos_resample"])
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
# Every CLIP: the OVSS repos' `interpolate_pos_encoding` (NACLIP/SCLIP clip/model.py, ClearCLIP's open_clip
# fork, PH-Reg's NACLIP teacher and CLIP/zero_shot student_CLIP.py) behind the paper's and baselines' numbers.
for _name, _aliases, _arg, _patch, _width, _depth, _heads, _res, _hub, _summary in _CLIP:
    _add(_name, _OPEN_CLIP, _arg, aliases=_aliases, patch_size=_patch, width=_width, depth=_depth, heads=_heads,
         resolution=_res, text=True, registers=0, hub=_hub, summary=_summary, pos_resample=OFFSET)

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


def _vit_policy(model_name: str) -> str:
    """The reference resampling of a catalogued timm ViT (see the comments)."""
    if "_dinov2" in model_name and "_reg" not in model_name:
        # PH-Reg's DINOv2 teacher/student: HF Dinov2Model of transformers==4.37.2 (offset 0.1, no antialias),
        # the same call as Meta's hub models without registers (interpolate_offset=0.1)
        return OFFSET
    # DINOv2 *_reg: Meta's hub (interpolate_offset=0.0, antialias) = timm, which DVT's "Registers" numbers used;
    # DeiT / DeiT-III / AugReg / DINO / MAE: timm's own dynamic_img_size forward
    return ANTIALIAS


for _name, _aliases, _arg, _patch, _width, _depth, _heads, _regs, _res, _summary in _VIT:
    _add(_name, _TIMM, _arg, aliases=_aliases, patch_size=_patch, width=_width, depth=_depth, heads=_heads,
         resolution=_res, text=False, registers=_regs, hub=f"timm/{_arg}", summary=_summary,
         pos_resample=_vit_policy(_arg))

# -- pass-through prefixes (their library's own resampling: timm's / open_clip's antialiased bicubic) -------
BACKBONES.add("timm:", _TIMM, family="timm",
              summary="any timm VisionTransformer: timm:<model_name>[.<tag>] (also timm:hf-hub:<org/repo>)")
BACKBONES.add("open_clip:", _OPEN_CLIP, family="open_clip",
              summary="any open_clip CLIP ViT: open_clip:<arch>/<pretrained tag>, e.g. open_clip:ViT-B-16/openai")
BACKBONES.add("hf-hub:", "phreg_bench.backbones.open_clip_backbones:build_hf_hub", family="hub",
              summary="a Hugging Face repo: open_clip (open_clip_config.json) or timm, e.g. "
                      "hf-hub:apple/DFN2B-CLIP-ViT-B-16")

# -- planted-artifact ViT and its twin (issue 7: the synthetic world; phreg_bench/synthetic/planted.py) --------
BACKBONES.add("planted-vit", "phreg_bench.synthetic.planted:build_planted_vit", family="builtin",
              summary="5-block ViT with planted register-neuron artifacts (known truth; the default run's teacher)",
              patch_size=4, width=64, depth=5, heads=4, resolution=40, text=False, registers=0, pos_resample=BUILTIN)
BACKBONES.add("planted-vit-twin", "phreg_bench.synthetic.planted:build_planted_twin", family="builtin",
              summary="planted-vit with the artifact mechanism off (same weights): the artifact-free reference",
              patch_size=4, width=64, depth=5, heads=4, resolution=40, text=False, registers=0, pos_resample=BUILTIN)
