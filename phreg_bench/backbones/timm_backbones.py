"""Backbones from timm ``VisionTransformer`` models (DINOv2 with/without registers, DeiT, DeiT-III, AugReg...).

``build("vit_base_patch14_dinov2.lvd142m")`` creates the timm architecture and loads, in this order of
precedence, ``--random-init`` seeded weights (no network), a local ``--weights`` file, or the hub weights
named by the model's pretrained config (``timm/<model>.<tag>``). Weights go through timm's own
``load_pretrained`` with the ViT checkpoint filter, so original DINOv2 / DeiT checkpoints convert as in timm.

``reduced=True`` (or a dict of ``depth``/``width``/``heads``/``grid``) builds the same code path at a tiny
size, for tests and CPU smoke runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from phreg_bench.backbones.base import Backbone, BackboneInfo, merge_reduced
from phreg_bench.backbones.hub import TIMM_FILES, fetch
from phreg_bench.backbones.hub import cache_dir as hub_cache_dir
from phreg_bench.backbones.weights import WeightsError, file_sha256, read_state_dict, state_dict_sha256
from phreg_core.adapters import TimmViTAdapter
from phreg_core.errors import ConfigError, UnsupportedModelError

# tiny test config: 2 blocks of width 48 (keeps DINOv2-g's SwiGLU hidden width even), 4x4 patch grid
REDUCED = {"depth": 2, "width": 48, "heads": 2, "grid": 4}


def reduced_config(reduced: bool | dict[str, int] | None) -> dict[str, int] | None:
    return merge_reduced(reduced, REDUCED)


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def create_model(model_name: str, *, seed: int = 0, reduced: dict[str, int] | None = None,
                 img_size: int | tuple[int, int] | None = None, **model_kwargs: Any) -> torch.nn.Module:
    """The timm architecture with seeded random weights (no download), classifier head removed."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True, **model_kwargs}
    if reduced is not None:
        kwargs.update(depth=reduced["depth"], embed_dim=reduced["width"], num_heads=reduced["heads"])
        named = re.search(r"patch(\d+)", model_name)  # timm ViT names carry the patch size
        if named:
            patch = (int(named.group(1)), int(named.group(1)))
        else:
            with torch.device("meta"):
                patch = _pair(_create(timm, model_name, kwargs).patch_embed.patch_size)
        kwargs["img_size"] = (reduced["grid"] * patch[0], reduced["grid"] * patch[1])
    if img_size is not None:
        kwargs["img_size"] = _pair(img_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _create(timm, model_name, kwargs)
    return model.eval()


def _create(timm, model_name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    if model_name.startswith("hf-hub:"):  # timm reads the architecture from the repo's config.json
        fetch(model_name[len("hf-hub:"):].split("@")[0], ("config.json",), what=f"the timm config of {model_name!r}")
        kwargs = {**kwargs, "cache_dir": str(hub_cache_dir())}
    try:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as error:  # non-ViT classes reject the ViT keyword arguments
        if "unexpected keyword argument" not in str(error):
            raise
        raise UnsupportedModelError(f"timm model {model_name!r} is not a plain VisionTransformer ({error})") from error


def check_supported(model: torch.nn.Module, model_name: str) -> None:
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"timm model {model_name!r} is a {type(model).__name__}, "
                                    "not a plain VisionTransformer; "
                        "phreg-bench needs absolute positional embeddings and CLS/register prefix tokens")
    if getattr(model, "dist_token", None) is not None:
        raise UnsupportedModelError(f"timm model {model_name!r} has a distillation token (distilled DeiT): "
                                    "not supported; "
                        "use the non-distilled DeiT (e.g. deit_base_patch16_224.fb_in1k)")


def hub_source(model: torch.nn.Module, model_name: str) -> tuple[str, tuple[str, ...]]:
    """The hub repo and candidate files holding ``model``'s pretrained weights."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise WeightsError(f"timm model {model_name!r} has no Hugging Face hub weights in its pretrained config; "
                           "pass --weights PATH (or --random-init)")
    filename = cfg.get("hf_hub_filename")
    return repo, (filename,) if filename else TIMM_FILES


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load through timm's ``load_pretrained`` (checkpoint filter, classifier removal), strictly."""
    from timm.models import load_pretrained
    from timm.models.vision_transformer import checkpoint_filter_fn

    cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "state_dict": state_dict, "source": "", "file": None}
    try:
        load_pretrained(model, pretrained_cfg=cfg, num_classes=0, filter_fn=checkpoint_filter_fn, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{source}: weights do not fit timm model "
                           f"{cfg.get('architecture', type(model).__name__)}: {error}") from error


def build(argument: str | None, *, weights: str | None = None, random_init: bool = False, seed: int = 0,
          reduced: bool | dict[str, int] | None = None, img_size: int | tuple[int, int] | None = None,
          name: str | None = None, **model_kwargs: Any) -> Backbone:
    """A :class:`Backbone` for the timm model ``argument`` (``model_name`` or ``model_name.tag``).

    ``img_size`` changes the native resolution (timm resamples the positional embedding once at load); it
    is not needed for other input sizes, which are resampled from the native grid at every forward.
    Other keyword arguments go to ``timm.create_model``.
    """
    if not argument:
        raise ConfigError("timm backbones need a model name, e.g. timm:vit_base_patch14_dinov2.lvd142m")
    small = reduced_config(reduced)
    if random_init and weights:
        raise ConfigError("--random-init and --weights exclude each other")
    weights_file: Path | None = None
    weights_id = f"random-init(seed={seed})"
    hub_repo = None
    if weights:
        weights_file = Path(weights).expanduser().resolve()
        weights_id = str(weights_file)
    elif not random_init:
        with torch.device("meta"):  # find the hub source before allocating real weights
            probe = create_model(argument, reduced=small, img_size=img_size, **model_kwargs)
        check_supported(probe, argument)
        hub_repo, candidates = hub_source(probe, argument)
        weights_file = fetch(hub_repo, candidates, what=f"weights for timm model {argument!r}")
        weights_id = f"hf-hub:{hub_repo}/{weights_file.name}"

    model = create_model(argument, seed=seed, reduced=small, img_size=img_size, **model_kwargs)
    check_supported(model, argument)
    if weights_file is not None:
        load_weights(model, read_state_dict(weights_file), str(weights_file))
    sha = file_sha256(weights_file) if weights_file is not None else state_dict_sha256(model)
    return wrap(model, name=name or f"timm:{argument}", architecture=argument, weights_id=weights_id,
                weights_sha256=sha, extra={"hub_repo": hub_repo, "reduced": small, "timm_model": argument})


def wrap(model: torch.nn.Module, *, name: str, architecture: str, weights_id: str, weights_sha256: str,
         extra: dict[str, Any] | None = None) -> Backbone:
    """Wrap a timm ``VisionTransformer`` and describe it."""
    vision = TimmViTAdapter(model)
    arch = architecture if not (extra or {}).get("reduced") else f"{architecture} [reduced {extra['reduced']}]"
    info = BackboneInfo(
        name=name, family="timm", architecture=arch, weights_id=weights_id, weights_sha256=weights_sha256,
        patch_size=vision.patch_size, embed_dim=vision.embed_dim, output_dim=vision.output_dim,
        depth=vision.depth, num_heads=vision.num_heads, num_registers=vision.num_builtin_registers,
        has_text=False, native_resolution=_pair(model.patch_embed.img_size),
        mean=tuple(vision.mean), std=tuple(vision.std), interpolation=vision.interpolation,
        extra={k: v for k, v in (extra or {}).items() if v is not None},
    )
    return Backbone(vision.eval(), info)
