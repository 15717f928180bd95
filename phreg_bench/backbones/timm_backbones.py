"""Backbones from timm ``VisionTransformer`` models (DINOv2 with/without registers, DeiT, DeiT-III, AugReg...).

``build("vit_base_patch14_dinov2.lvd142m")`` creates the timm architecture and loads a local ``--weights``
file, ``--random-init`` seeded weights (no network), or else the hub weights named by the model's pretrained
config (``timm/<model>.<tag>``), see :func:`~phreg_bench.backbones.weights.resolve_weights`. Weights go
through timm's own ``load_pretrained`` with the ViT checkpoint filter, so original DINOv2 / DeiT checkpoints
convert as in timm.

``reduced=True`` (or a dict of ``depth``/``width``/``heads``/``grid``) builds the same code path at a tiny
size, for tests and CPU smoke runs.

Inputs at other grids resample the position table with ``pos_resample`` (default: timm's own
``resample_abs_pos_embed``, i.e. ``"bicubic-antialias"``, what timm's ``dynamic_img_size`` forward does; the
catalogue sets the reference policy per family, e.g. ``"bicubic-offset"`` for DINOv2 as in PH-Reg's code).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from phreg_bench.backbones.base import Backbone, BackboneIdentity, merge_reduced
from phreg_bench.backbones.hub import TIMM_FILES, fetch
from phreg_bench.backbones.hub import cache_dir as hub_cache_dir
from phreg_bench.backbones.weights import WeightsError, WeightsSource, read_state_dict, resolve_weights
from phreg_core.errors import ConfigError, UnsupportedModelError
from phreg_core.pos_embed import get_policy, resample_table
from phreg_core.towers import LIBRARY_POLICY, TimmTokenViT

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


def _fit_pos_embed(model: torch.nn.Module, state_dict: dict[str, torch.Tensor],
                   policy: str) -> dict[str, torch.Tensor]:
    """A timm-layout ``pos_embed`` stored at another square grid, resampled to the model's grid with
    ``policy`` (instead of inside timm's checkpoint filter, which uses its own call); other layouts pass."""
    pos = state_dict.get("pos_embed")
    if pos is None or pos.dim() != 3 or pos.shape[1] == model.pos_embed.shape[1]:
        return state_dict
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    side = math.isqrt(max(pos.shape[1] - prefix, 0))
    if side * side != pos.shape[1] - prefix:
        return state_dict  # e.g. an original DINOv2 layout: timm's filter converts it
    return {**state_dict, "pos_embed": resample_table(pos, (side, side), tuple(model.patch_embed.grid_size), policy)}


def set_native_size(model: torch.nn.Module, img_size: int | tuple[int, int], policy: str) -> None:
    """Make ``img_size`` the model's native resolution: its loaded position table is resampled once with
    ``policy`` (what the reference does at that input size), not with ``set_input_size``'s own call."""
    old, old_grid = model.pos_embed.detach().clone(), tuple(model.patch_embed.grid_size)
    model.set_input_size(img_size=_pair(img_size))
    table = resample_table(old, old_grid, tuple(model.patch_embed.grid_size), policy)
    model.pos_embed = torch.nn.Parameter(table.contiguous(), requires_grad=model.pos_embed.requires_grad)


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                 pos_resample: str = LIBRARY_POLICY) -> None:
    """Load through timm's ``load_pretrained`` (checkpoint filter, classifier removal), strictly; a position
    table stored at another grid is resampled with ``pos_resample`` first."""
    from timm.models import load_pretrained
    from timm.models.vision_transformer import checkpoint_filter_fn

    state_dict = _fit_pos_embed(model, state_dict, pos_resample)
    cfg = {**(getattr(model, "pretrained_cfg", None) or {}), "state_dict": state_dict, "source": "", "file": None}
    try:
        load_pretrained(model, pretrained_cfg=cfg, num_classes=0, filter_fn=checkpoint_filter_fn, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{source}: weights do not fit timm model "
                           f"{cfg.get('architecture', type(model).__name__)}: {error}") from error


def _hub_weights(argument: str, small: dict[str, int] | None, model_kwargs: dict[str, Any]) -> WeightsSource:
    """The hub weights named by the model's pretrained config, fetched; the architecture is checked on a
    meta-device probe first, so an unsupported model fails before any download or allocation."""
    with torch.device("meta"):
        probe = create_model(argument, reduced=small, **model_kwargs)
    check_supported(probe, argument)
    repo, candidates = hub_source(probe, argument)
    return WeightsSource.from_hub(repo, fetch(repo, candidates, what=f"weights for timm model {argument!r}"))


def build(argument: str | None, *, weights: str | None = None, random_init: bool = False, seed: int = 0,
          reduced: bool | dict[str, int] | None = None, img_size: int | tuple[int, int] | None = None,
          name: str | None = None, pos_resample: str | None = None, fetched: WeightsSource | None = None,
          **model_kwargs: Any) -> Backbone:
    """A :class:`Backbone` for the timm model ``argument`` (``model_name`` or ``model_name.tag``), named
    ``name`` (default ``timm:<argument>``).

    ``pos_resample`` names the positional-embedding resampling policy (:mod:`phreg_core.pos_embed`;
    default timm's own, ``"bicubic-antialias"``); an unknown name raises before any model is built.
    ``fetched``: hub weights a catalogue entry already fetched (used instead of looking them up again).

    ``img_size`` changes the native resolution (the loaded positional embedding is resampled once, with the
    ``pos_resample`` policy); it is not needed for other input sizes, which are resampled from the native
    grid at every forward.
    Other keyword arguments go to ``timm.create_model``.
    """
    if not argument:
        raise ConfigError("timm backbones need a model name, e.g. timm:vit_base_patch14_dinov2.lvd142m")
    policy = get_policy(pos_resample or LIBRARY_POLICY)
    small = reduced_config(reduced)
    source = resolve_weights(weights, random_init=random_init, seed=seed,
                             hub=lambda: fetched or _hub_weights(argument, small, model_kwargs))
    model = create_model(argument, seed=seed, reduced=small, **model_kwargs)
    check_supported(model, argument)
    if source.file is not None:
        load_weights(model, read_state_dict(source.file), str(source.file), policy.name)
    if img_size is not None:
        set_native_size(model, img_size, policy.name)
    return wrap(model, name=name or f"timm:{argument}", architecture=argument, weights_id=source.weights_id,
                weights_sha256=source.sha256(model),
                extra={"hub_repo": source.hub_repo, "reduced": small, "timm_model": argument},
                pos_resample=policy.name)


def wrap(model: torch.nn.Module, *, name: str, architecture: str, weights_id: str, weights_sha256: str,
         extra: dict[str, Any] | None = None, pos_resample: str = LIBRARY_POLICY) -> Backbone:
    """Wrap a timm ``VisionTransformer`` and name it (``pos_resample``: see :func:`build`); ``None`` values of
    ``extra`` are left out."""
    extra = {k: v for k, v in (extra or {}).items() if v is not None}
    arch = architecture if not extra.get("reduced") else f"{architecture} [reduced {extra['reduced']}]"
    identity = BackboneIdentity(name=name, family="timm", architecture=arch, weights_id=weights_id,
                                weights_sha256=weights_sha256, extra=extra)
    return Backbone(TimmTokenViT(model, pos_resample).eval(), identity)
