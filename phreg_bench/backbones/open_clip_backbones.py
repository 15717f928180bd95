"""Backbones from open_clip models with a plain ``VisionTransformer`` image tower (CLIP, OpenCLIP, DFN, MetaCLIP).

``build("ViT-B-16/openai")`` builds open_clip's architecture (with the tag's QuickGELU flag and
preprocessing) and loads, in this order of precedence, ``--random-init`` seeded weights (no network), a
local ``--weights`` file, or the tag's hub weights. ``build_hub("laion/CLIP-ViT-B-16-laion2B-s34B-b88K")``
reads the repo's ``open_clip_config.json`` first. Weight files are read by
:func:`~phreg_bench.backbones.weights.read_state_dict` (no arbitrary unpickling) and converted with
open_clip's own helpers (third-party key conversion, positional-embedding resizing).

Image towers that open_clip builds from timm (SigLIP, SigLIP 2, PE, ViTamin, EVA) are refused: SigLIP's
and PE's joint space is reached through attention pooling (MAP head), not a linear projection of each
token, so there is no per-patch CLIP-space output to give. ResNet and ConvNeXt towers are not ViTs.

open_clip's own forward does not resample positional embeddings (it resizes them once at load, with
``resize_pos_embed``: antialiased bicubic); inputs at other grids resample with ``pos_resample``, by
default that same call (``"bicubic-antialias"``). The catalogue's CLIP entries use the open-vocabulary
segmentation repos' call instead (``"bicubic-offset"``).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from phreg_bench.backbones.base import Backbone, BackboneIdentity, merge_reduced
from phreg_bench.backbones.hub import (
    OPEN_CLIP_FILES,
    HubUnavailableError,
    cached_file,
    fetch,
    unreachable_reason,
)
from phreg_bench.backbones.open_clip_text import OpenClipTextTower
from phreg_bench.backbones.weights import (
    WeightsError,
    WeightsSource,
    check_weights_options,
    read_state_dict,
    resolve_weights,
)
from phreg_core.errors import ConfigError, UnsupportedModelError
from phreg_core.pos_embed import get_policy, resample_table
from phreg_core.towers import LIBRARY_POLICY, OpenClipTokenViT

# tiny test config: 2 blocks of width 48 (2 heads), 4x4 grid; text tower 2 blocks of width 32; joint dim 32
REDUCED = {"depth": 2, "width": 48, "heads": 2, "grid": 4, "text_depth": 2, "text_width": 32, "text_heads": 2,
           "embed_dim": 32}
HUB_CONFIG = "open_clip_config.json"
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
OPENAI_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")  # popped by open_clip too


def reduced_config(reduced: bool | dict[str, int] | None) -> dict[str, int] | None:
    return merge_reduced(reduced, REDUCED)


def check_supported(model_cfg: dict[str, Any], label: str) -> None:
    vision = model_cfg.get("vision_cfg", {})
    if "timm_model_name" in vision:
        raise UnsupportedModelError(
            f"open_clip model {label!r} has a timm image tower ({vision['timm_model_name']}, pool "
            f"{vision.get('timm_pool')!r}): not a plain CLIP ViT. Its joint space is reached through the pooling "
            "head, not a per-token projection, so no dense CLIP-space features exist; use "
            "timm:<name> for its patch features")
    if isinstance(vision.get("layers"), (list, tuple)):
        raise UnsupportedModelError(f"open_clip model {label!r} has a ResNet image tower, not a ViT")
    if vision.get("attentional_pool"):
        raise UnsupportedModelError(f"open_clip model {label!r} pools with attention (CoCa-style): not supported")


def _reduce(model_cfg: dict[str, Any], small: dict[str, int]) -> dict[str, Any]:
    cfg = copy.deepcopy(model_cfg)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    patch = int(vision["patch_size"])
    vision.update(layers=small["depth"], width=small["width"], head_width=small["width"] // small["heads"],
                  image_size=small["grid"] * patch)
    text.update(layers=small["text_depth"], width=small["text_width"], heads=small["text_heads"])
    cfg["embed_dim"] = small["embed_dim"]
    return {"vision_cfg": vision, "text_cfg": text, "embed_dim": cfg["embed_dim"]}


def _safe_alternatives(filename: str) -> tuple[str, ...]:
    """The safetensors twin open_clip looks for before a ``.bin``/``.pth`` file."""
    if filename == OPEN_CLIP_FILES[1]:
        return (OPEN_CLIP_FILES[0],)
    return (filename[:-4] + ".safetensors",) if filename.endswith((".bin", ".pth")) else ()


# -- weights sources ------------------------------------------------------------------------------------
def _fetch_url(url: str, label: str) -> Path:
    """open_clip's URL download (cache ``~/.cache/clip``), with the same fast offline failure as the hub."""
    from open_clip.pretrained import download_pretrained_from_url

    target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(urlparse(url).path)
    if target.is_file():
        return target
    reason = unreachable_reason(url)
    if reason:
        raise HubUnavailableError(
            f"cannot get weights for open_clip model {label!r}: {reason}.\n  needed: {url}\n"
            f"  cache: {target.parent}\n  fix: download it on a machine with internet into that folder, or pass "
            "`--weights PATH` (`--random-init` runs without weights)")
    return Path(download_pretrained_from_url(url))


def tag_weights(pretrained_cfg: dict[str, Any], label: str) -> WeightsSource:
    """The weights of an open_clip pretrained tag, fetched, preferring the hub like open_clip."""
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)  # open_clip: "org/repo/" means its default file name
        candidates = (*_safe_alternatives(filename), filename) if filename else OPEN_CLIP_FILES
        return WeightsSource.from_hub(repo, fetch(repo, candidates, what=f"weights for open_clip model {label!r}"))
    if pretrained_cfg.get("url"):
        return WeightsSource(_fetch_url(pretrained_cfg["url"], label), pretrained_cfg["url"])
    raise WeightsError(f"open_clip model {label!r} names no weights location; pass --weights PATH")


def _fit_image_pos_embed(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], policy: str,
                         source: str) -> None:
    """open_clip's ``resize_pos_embed`` step (square stored grid -> the tower's grid, CLS row kept), with the
    backbone's resampling ``policy`` instead of open_clip's own call (the two agree for its default)."""
    old = state_dict.get("visual.positional_embedding")
    if old is None or not hasattr(model.visual, "grid_size"):
        return
    size = model.visual.grid_size
    grid = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if old.shape[0] == 1 + grid[0] * grid[1]:
        return
    side = math.isqrt(old.shape[0] - 1)
    if side * side != old.shape[0] - 1:
        raise WeightsError(f"{source}: visual.positional_embedding has {old.shape[0]} rows, not 1 + a square grid")
    state_dict["visual.positional_embedding"] = resample_table(old, (side, side), grid, policy)


def load_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                    pos_resample: str = LIBRARY_POLICY) -> None:
    """The steps of ``open_clip.load_checkpoint`` after reading the file, then a strict load (the image
    position table, if stored at another grid, is resampled with ``pos_resample``)."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_text_pos_embed

    state_dict = dict(state_dict)
    for key in OPENAI_JIT_EXTRAS:
        state_dict.pop(key, None)
    state_dict = convert_state_dict(model, state_dict)
    if "positional_embedding" in state_dict and not hasattr(model, "positional_embedding"):
        state_dict = convert_to_custom_text_state_dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state_dict and own is not None and own.ndim != state_dict[key].ndim:
            state_dict[key] = state_dict[key].reshape(own.shape)
    if "logit_bias" not in state_dict and getattr(model, "logit_bias", None) is not None:
        state_dict["logit_bias"] = torch.zeros_like(model.logit_bias)
    _fit_image_pos_embed(model, state_dict, pos_resample, source)
    resize_text_pos_embed(state_dict, model)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"{source}: weights do not fit the open_clip model: {error}") from error


# -- building -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def tokenizer_for(name: str):
    """open_clip's tokenizer for an architecture (or ``local-dir:`` config), built once per name."""
    import open_clip

    return open_clip.get_tokenizer(name)


def _create(create_name: str, *, seed: int, quick_gelu: bool, preprocess: dict[str, Any],
            overrides: dict[str, Any], img_size: int | None) -> torch.nn.Module:
    import open_clip

    if img_size is not None and "vision_cfg" in overrides:  # a reduced config's image size yields to img_size
        overrides = {**overrides, "vision_cfg": {**overrides["vision_cfg"], "image_size": img_size}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(create_name, pretrained=None, load_weights=False, device="cpu",
                                       force_quick_gelu=quick_gelu, force_image_size=img_size,
                                       force_preprocess_cfg=preprocess or None, **overrides)
    return model.eval()


def _finish(model: torch.nn.Module, tokenizer, *, name: str, architecture: str, source: WeightsSource,
            extra: dict[str, Any], pos_resample: str) -> Backbone:
    """The named backbone of a loaded open_clip model: image tower (TokenViT), text tower, identity."""
    sha = source.sha256(model)
    text = OpenClipTextTower(model, tokenizer, identity=f"open_clip:{architecture}@{sha[:16]}")
    extra = {**extra, "logit_scale": float(model.logit_scale.detach().exp()),
             "context_length": int(getattr(model, "context_length", 0) or 0) or None,
             "text_pool": text.pool_type, "text_truncation": text.can_truncate}
    identity = BackboneIdentity(name=name, family="open_clip", architecture=architecture,
                                weights_id=source.weights_id, weights_sha256=sha,
                                extra={k: v for k, v in extra.items() if v is not None})
    return Backbone(OpenClipTokenViT(model.visual, pos_resample).eval(), identity, text.eval())


def build(argument: str | None, *, weights: str | None = None, random_init: bool = False, seed: int = 0,
          reduced: bool | dict[str, int] | None = None, img_size: int | None = None, name: str | None = None,
          quick_gelu: bool | None = None, pos_resample: str | None = None,
          fetched: WeightsSource | None = None) -> Backbone:
    """A :class:`Backbone` for ``"<arch>/<pretrained tag>"`` (or ``"<arch>"`` with --weights/--random-init),
    named ``name`` (default ``open_clip:<argument>``).

    ``fetched``: the tag's hub weights, already fetched by a catalogue entry (not looked up again).

    ``quick_gelu`` defaults to the tag's setting (OpenAI, DFN and MetaCLIP weights were trained with
    QuickGELU). An untagged ``<arch>`` uses the architecture's own activation (QuickGELU only for the
    ``-quickgelu`` names): pass ``quick_gelu=true`` for such checkpoints, or name their tag.
    ``img_size`` changes the native resolution (loaded weights' positional embedding is resized once); it is
    not needed for other input sizes, which are resampled from the native grid at every forward. Both use
    the ``pos_resample`` policy (:mod:`phreg_core.pos_embed`; default open_clip's own, ``"bicubic-antialias"``).
    """
    import open_clip

    if not argument:
        raise ConfigError("open_clip backbones need '<arch>/<pretrained>', e.g. open_clip:ViT-B-16/openai")
    policy = get_policy(pos_resample or LIBRARY_POLICY)
    if argument.startswith("hf-hub:"):
        return build_hub(argument[len("hf-hub:"):], weights=weights, random_init=random_init, seed=seed,
                         reduced=reduced, img_size=img_size, name=name, pos_resample=policy.name)
    check_weights_options(weights, random_init)  # before the tag checks below
    arch, _, tag = argument.partition("/")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ConfigError(f"open_clip has no architecture {arch!r} (see open_clip.list_models())")
    check_supported(model_cfg, argument)
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag and not pretrained_cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise ConfigError(f"open_clip {arch!r} has no pretrained tag {tag!r} (known: {known})")
    if not tag and not (weights or random_init):
        raise ConfigError(f"open_clip:{arch} names no pretrained tag: add '/<tag>', --weights PATH or --random-init")
    small = reduced_config(reduced)
    if quick_gelu is None:
        quick_gelu = bool(pretrained_cfg.get("quick_gelu", False) or model_cfg.get("quick_gelu", False))
    elif tag and quick_gelu != bool(pretrained_cfg.get("quick_gelu", False)):
        raise ConfigError(f"quick_gelu={quick_gelu} contradicts the pretrained tag {tag!r} of {arch!r}")

    source = resolve_weights(weights, random_init=random_init, seed=seed,
                             hub=lambda: fetched or tag_weights(pretrained_cfg, argument))
    preprocess = {k: pretrained_cfg[k] for k in PREPROCESS_KEYS if k in pretrained_cfg}
    model = _create(arch, seed=seed, quick_gelu=quick_gelu, preprocess=preprocess,
                    overrides=_reduce(model_cfg, small) if small else {}, img_size=img_size)
    if source.file is not None:
        load_state_dict(model, read_state_dict(source.file), str(source.file), policy.name)
    architecture = arch + (f" [reduced {small}]" if small else "")
    return _finish(model, tokenizer_for(arch), name=name or f"open_clip:{argument}",
                   architecture=architecture, source=source,
                   extra={"pretrained_tag": tag or None, "hub_repo": source.hub_repo,
                          "quick_gelu": quick_gelu or bool(model_cfg.get("quick_gelu", False)),
                          "reduced": small}, pos_resample=policy.name)


def build_hub(repo: str | None, *, weights: str | None = None, random_init: bool = False, seed: int = 0,
              reduced: bool | dict[str, int] | None = None, img_size: int | None = None, name: str | None = None,
              pos_resample: str | None = None) -> Backbone:
    """A :class:`Backbone` for an open_clip model on the Hugging Face hub (``org/repo``), named ``name``
    (default ``hf-hub:<repo>``)."""
    if not repo:
        raise ConfigError("hf-hub backbones need a repo id, e.g. hf-hub:apple/DFN2B-CLIP-ViT-B-16")
    policy = get_policy(pos_resample or LIBRARY_POLICY)
    check_weights_options(weights, random_init)  # before the config download
    config_path = fetch(repo, (HUB_CONFIG,), what=f"the open_clip config of {repo!r}")
    model_cfg = json.loads(config_path.read_text())["model_cfg"]
    label = f"hf-hub:{repo}"
    check_supported(model_cfg, label)
    small = reduced_config(reduced)
    source = resolve_weights(weights, random_init=random_init, seed=seed, hub=lambda: WeightsSource.from_hub(
        repo, fetch(repo, OPEN_CLIP_FILES, what=f"weights for {label!r}")))
    local = f"local-dir:{config_path.parent}"
    model = _create(local, seed=seed, quick_gelu=False, preprocess={},
                    overrides=_reduce(model_cfg, small) if small else {}, img_size=img_size)
    if source.file is not None:
        load_state_dict(model, read_state_dict(source.file), str(source.file), policy.name)
    architecture = label + (f" [reduced {small}]" if small else "")
    return _finish(model, tokenizer_for(local), name=name or label, architecture=architecture, source=source,
                   extra={"hub_repo": repo, "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
                          "reduced": small}, pos_resample=policy.name)


def build_hf_hub(argument: str | None, *, name: str | None = None, **options: Any) -> Backbone:
    """The ``hf-hub:`` prefix: an open_clip repo (``open_clip_config.json``), else a timm repo (``config.json``);
    named ``name`` (default ``hf-hub:<argument>``)."""
    from phreg_bench.backbones import timm_backbones

    if not argument:
        raise ConfigError("hf-hub backbones need a repo id, e.g. hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K")
    is_timm = cached_file(argument, ("config.json",)) is not None and cached_file(argument, (HUB_CONFIG,)) is None
    if not is_timm:
        try:
            return build_hub(argument, name=name, **options)
        except HubUnavailableError as error:
            if "has none of the files" not in str(error):
                raise
    return timm_backbones.build(f"hf-hub:{argument}", name=name or f"hf-hub:{argument}", **options)


__all__ = ["build", "build_hub", "build_hf_hub", "load_state_dict"]
