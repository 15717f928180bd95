"""Method ``dvt``: the stage-2 "generalizable denoiser" of Denoising Vision Transformers on any matching ViT.

DVT (Yang, Luo, Li, Deng, Guibas, Krishnan, Weinberger, Tian, Wang, "Denoising Vision Transformers",
ECCV 2024; code ``Jiawei-Yang/Denoising-ViT``, MIT) cleans a frozen ViT's final feature map with one extra
transformer block. The module is ``Denoiser`` in ``dvt/models/online_denoiser.py`` (the same layout as
``DenoisingViT/generalizable_denoiser.py``); run on features it computes, with ``x`` the backbone's
final-normalised last-block patch tokens (``vit.get_intermediate_layers(x, n=[last], norm=True)``, timm's
``forward_intermediates``), ``[B, h·w, C]``::

    x = x + resample_abs_pos_embed(pos_embed, (h, w), num_prefix_tokens=0)   # timm: bicubic, antialias
    x = Block(dim=C, num_heads=C // 64, mlp_ratio=4, qkv_bias=True, qk_norm=False, init_values=None,
              norm_layer=LayerNorm(eps=1e-6), act_layer=GELU, mlp_layer=Mlp)(x)   # timm's ViT block

``pos_embed`` ``[1, H0·W0, C]`` is a learned table at the training grid (H0 = 37 for patch 14 at 518 px,
32 for patch 16 at 512 px; ``main_denoiser.py``), resampled to each input's grid; there are no prefix
tokens, so CLS and registers pass through unchanged. ``num_blocks > 1`` (an ``nn.Sequential`` of blocks,
keys ``denoiser.<i>.…``) is read too. Released checkpoints are ``{"denoiser": state_dict, "optimizer": …,
"step": …}`` (``main_denoiser.py``; loaded by ``evaluate_dense_tasks.py`` from ``ckpt["denoiser"]``).

Only the released (or separately trained) stage-2 weights are loaded here. **Stage 1** — fitting a
per-image neural field (Instant-NGP hash grid + MLP, 768 views, 25k iterations per image) to split each
image's features into a clean field, a shared artifact map and a residual — and the stage-2 training on its
outputs are **out of scope** for this project.

With an open-vocabulary task the denoised final-normalised tokens go through the backbone's projection
(CLIP's ``proj``) afterwards; that composition (denoise in the ViT's width, then project) is this project's
choice, since DVT's own evaluation stops at the ViT's features. ``inner`` runs the denoiser on another
method's final features (e.g. ``inner=maskclip``); the default is the plain backbone, as in DVT.

Options: ``denoiser`` (a local ``.pth``/``.pt``/``.safetensors`` file, or ``hf-hub:<org>/<repo>/<file>``
[``@<revision>``]), ``base`` (the model the denoiser was trained for; default: the file's name when it names a
catalogue backbone or timm model, e.g. ``vit_base_patch14_dinov2.lvd142m.pth``), ``inner`` (default ``raw``)
and the inner method's own options.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from phreg_bench.backbones.base import Backbone
from phreg_bench.backbones.weights import WeightsError, read_state_dict
from phreg_bench.checkpoints.hub_spec import HubSpec, is_hub_spec
from phreg_bench.methods.base import DenseModel
from phreg_bench.methods.options import Option, inner_method_options, method_options
from phreg_core.errors import ConfigError, MissingFileError, PhregError
from phreg_core.hashing import file_sha256
from phreg_core.vit import TokenOutput

__all__ = ["DVTDenoiser", "DVTMismatchError", "DVTModel", "build", "load_denoiser_file"]

HEAD_WIDTH = 64  # DVT: num_heads = feat_dim // 64 (online_denoiser.py)
MLP_RATIO = 4  # DVT: mlp_ratio=4
LN_EPS = 1e-6  # DVT: partial(nn.LayerNorm, eps=1e-6)
# One timm Block's tensors and their shapes as functions of the width C (timm.models.vision_transformer.Block).
BLOCK_SHAPES = {
    "norm1.weight": lambda c: (c,), "norm1.bias": lambda c: (c,),
    "attn.qkv.weight": lambda c: (3 * c, c), "attn.qkv.bias": lambda c: (3 * c,),
    "attn.proj.weight": lambda c: (c, c), "attn.proj.bias": lambda c: (c,),
    "norm2.weight": lambda c: (c,), "norm2.bias": lambda c: (c,),
    "mlp.fc1.weight": lambda c: (MLP_RATIO * c, c), "mlp.fc1.bias": lambda c: (MLP_RATIO * c,),
    "mlp.fc2.weight": lambda c: (c, MLP_RATIO * c), "mlp.fc2.bias": lambda c: (c,),
}
LOCAL_HINT = "pass `-o denoiser=PATH` with a local copy of the file"


class DVTMismatchError(PhregError, ValueError):
    """Denoiser weights that do not fit (layout) or do not belong to (width/patch/layer) the backbone."""


def _block(width: int) -> nn.Module:
    from timm.models.vision_transformer import Block, Mlp

    return Block(dim=width, num_heads=width // HEAD_WIDTH, mlp_ratio=MLP_RATIO, qkv_bias=True, qk_norm=False,
                 init_values=None, norm_layer=partial(nn.LayerNorm, eps=LN_EPS), act_layer=nn.GELU, mlp_layer=Mlp)


class DVTDenoiser(nn.Module):
    """DVT's stage-2 denoiser; its state dict has DVT's own keys (``denoiser.…``, ``pos_embed``).

    ``forward`` maps a patch grid ``[B, C, h, w]`` (final-normalised ViT features) to the denoised grid of the
    same shape. ``grid`` is the training grid ``(H0, W0)`` of the positional table (square, as DVT's
    ``resample_abs_pos_embed`` call assumes); ``grid=None`` means no positional embedding (``enable_pe=False``).
    """

    def __init__(self, width: int, grid: tuple[int, int] | None, num_blocks: int = 1):
        super().__init__()
        if width < HEAD_WIDTH or width % (width // HEAD_WIDTH):
            raise DVTMismatchError(f"DVT's denoiser has width // {HEAD_WIDTH} attention heads; width {width} "
                                   f"gives {width // HEAD_WIDTH}, which does not divide it")
        self.width, self.grid, self.num_blocks = int(width), grid, int(num_blocks)
        blocks = [_block(width) for _ in range(num_blocks)]
        self.denoiser = blocks[0] if num_blocks == 1 else nn.Sequential(*blocks)
        self.pos_embed = None if grid is None else nn.Parameter(torch.zeros(1, grid[0] * grid[1], width))

    def forward(self, patches: Tensor) -> Tensor:
        from timm.layers import resample_abs_pos_embed

        batch, channels, height, width = patches.shape
        tokens = patches.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        if self.pos_embed is not None:
            tokens = tokens + resample_abs_pos_embed(self.pos_embed, (height, width), num_prefix_tokens=0)
        tokens = self.denoiser(tokens)
        return tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)


# -- reading DVT's files ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DenoiserFile:
    """A denoiser checkpoint read from disk: the module, the file's sha256 and where it came from."""

    module: DVTDenoiser
    path: Path
    sha256: str
    source: str  # the name the user gave (path or hf-hub spec)


def _read_checkpoint(path: Path) -> dict[str, Tensor]:
    """DVT's ``{"denoiser": state_dict, ...}`` or a bare state dict; no pickled code is ever run."""
    if not path.is_file():
        raise MissingFileError(f"DVT denoiser file {path} does not exist (option `denoiser`)")
    if path.suffix == ".safetensors":
        return read_state_dict(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for code, RuntimeError/EOFError for damaged files
        raise WeightsError(f"{path}: not a DVT checkpoint readable with torch.load(weights_only=True): "
                           f"{str(error).splitlines()[0]}") from error
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("denoiser"), dict):
        checkpoint = checkpoint["denoiser"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, Tensor) for v in checkpoint.values()):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise WeightsError(f"{path}: expected DVT's {{'denoiser': state_dict}} or a state dict of tensors, "
                           f"got {keys}")
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if not k.startswith("vit.")}


def _layout_error(path: Path, missing: list[str], unexpected: list[str], wrong: list[str]) -> DVTMismatchError:
    lines = [f"{path} is not a DVT stage-2 denoiser (one timm Block as `denoiser.*` plus `pos_embed`):"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:12])}{' …' if len(keys) > 12 else ''}")
    return DVTMismatchError("\n".join(lines))


def denoiser_from_state(state: dict[str, Tensor], path: Path) -> DVTDenoiser:
    """Build the module that fits ``state`` (width, grid, number of blocks) and load it strictly."""
    norm = state.get("denoiser.norm1.weight", state.get("denoiser.0.norm1.weight"))
    if norm is None or norm.dim() != 1:
        raise _layout_error(path, ["denoiser.norm1.weight"], sorted(state)[:12], [])
    width = int(norm.shape[0])
    indices = {int(m.group(1)) for k in state if (m := re.match(r"denoiser\.(\d+)\.", k))}
    num_blocks = max(indices) + 1 if indices else 1
    prefixes = [f"denoiser.{i}." for i in range(num_blocks)] if indices else ["denoiser."]
    expected = {prefix + key: shape(width) for prefix in prefixes for key, shape in BLOCK_SHAPES.items()}
    grid = None
    if "pos_embed" in state:
        rows = state["pos_embed"].shape[1] if state["pos_embed"].dim() == 3 else -1
        side = int(round(max(rows, 0) ** 0.5))
        if side * side != rows:
            raise DVTMismatchError(f"{path}: pos_embed has shape {tuple(state['pos_embed'].shape)}; DVT's table is "
                                   "[1, H0·W0, C] with a square training grid")
        grid = (side, side)
        expected["pos_embed"] = (1, rows, width)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in set(expected) & set(state)
                   if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise _layout_error(path, missing, unexpected, wrong)
    module = DVTDenoiser(width, grid, num_blocks)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.eval()


def load_denoiser_file(source: str | Path) -> DenoiserFile:
    """Read a DVT denoiser from a local file or ``hf-hub:<org>/<repo>/<file>[@rev]``."""
    text = str(source)
    if is_hub_spec(text):
        spec = HubSpec.parse(text, what="DVT denoiser")
        if spec.path is None:
            raise DVTMismatchError(f"denoiser {text!r} names a repo but no file; DVT's repo holds one file per "
                                   "backbone: hf-hub:<org>/<repo>/<folder>/<model>.pth")
        path = HubSpec(spec.repo_id, None, spec.revision).fetch(
            [spec.path], what=f"DVT denoiser weights {text!r}", local_hint=LOCAL_HINT)
    else:
        path = Path(text).expanduser()
    module = denoiser_from_state(_read_checkpoint(path), path)
    return DenoiserFile(module=module, path=path, sha256=file_sha256(path), source=text)


# -- does a denoiser belong to a backbone? --------------------------------------------------------------------
def _catalogue_geometry(base: str) -> tuple[str, dict[str, Any]] | None:
    """``(catalogue name, metadata)`` of a backbone named ``base`` (catalogue name, alias or timm name)."""
    from phreg_bench.backbones.catalogue import BACKBONES

    for entry in BACKBONES:
        named = base == entry.name or base in entry.aliases or base == entry.metadata.get("argument")
        if named and "width" in entry.metadata:
            return entry.name, entry.metadata
    return None


def _identities(backbone: Backbone) -> set[str]:
    identity = backbone.identity
    names = {identity.name, identity.architecture.split(" [reduced")[0], str(identity.extra.get("timm_model") or "")}
    entry = _catalogue_geometry(identity.name)
    if entry is not None:
        names |= {entry[0], str(entry[1].get("argument") or "")}
    return {name for name in names if name}


def check_fit(denoiser: DVTDenoiser, base: str | None, backbone: Backbone, source: str) -> None:
    """Refuse a backbone whose width, patch size or feature layer differs from what the denoiser was trained on."""
    where = f"DVT denoiser {source!r}"
    if denoiser.width != backbone.embed_dim:
        raise DVTMismatchError(f"{where} has width {denoiser.width} but backbone {backbone.name!r} has width "
                               f"{backbone.embed_dim}; use the denoiser trained for this backbone")
    if base is None:
        return
    known = _catalogue_geometry(base)
    ours = (f"backbone {backbone.name!r} has patch {backbone.patch_size}, width {backbone.embed_dim}, "
            f"{backbone.depth} blocks (features of block {backbone.depth - 1})")
    if known is not None:
        meta = known[1]
        theirs = (f"{where} was trained on {base!r}: patch {meta['patch_size']}, width {meta['width']}, "
                  f"{meta['depth']} blocks (features of block {meta['depth'] - 1})")
        if (meta["patch_size"], meta["width"], meta["depth"]) != (backbone.patch_size, backbone.embed_dim,
                                                                  backbone.depth):
            raise DVTMismatchError(f"{theirs}, but {ours}")
    else:
        named = re.search(r"patch(\d+)", base)
        if named and int(named.group(1)) != backbone.patch_size:
            raise DVTMismatchError(f"{where} was trained on {base!r} (patch {named.group(1)}), but {ours}")
    names = _identities(backbone)
    if base not in names and (known is None or known[0] not in names):
        raise DVTMismatchError(
            f"{where} was trained on {base!r}, but the backbone is {backbone.name!r} "
            f"({backbone.identity.architecture}); a DVT denoiser learns one model's artifacts. Use the matching "
            f"backbone, or pass -o base={backbone.name} to apply it to this one anyway")


def base_from_name(path: Path) -> str | None:
    """The model a file is named after (DVT releases one ``<timm model>.pth`` per backbone), if recognisable."""
    stem = path.name
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        stem = stem.removesuffix(suffix)
    if _catalogue_geometry(stem) is not None or re.search(r"patch\d+", stem):
        return stem
    return None


# -- the method -------------------------------------------------------------------------------------------------
class DVTModel(DenseModel):
    """``inner``'s final features through DVT's denoiser; prefix tokens (CLS, registers) pass unchanged."""

    def __init__(self, backbone: Backbone, inner: DenseModel, denoiser: DenoiserFile, base: str | None):
        config = {"denoiser_sha256": denoiser.sha256, "base": base, "width": denoiser.module.width,
                  "grid": list(denoiser.module.grid) if denoiser.module.grid else None,
                  "num_blocks": denoiser.module.num_blocks, "layer": backbone.depth - 1,
                  "inner": inner.describe()}
        super().__init__(backbone, "dvt", config)
        self.inner = inner
        self.denoiser = denoiser.module.to(next(backbone.vision.parameters()).device)
        self.source = denoiser.source

    def dense_tokens(self, images: Tensor, layers: Sequence[int] = (-1,), *,
                     project: bool = False) -> list[TokenOutput]:
        """The final layer only (DVT's denoiser is trained on final features): ``layers`` other than the last
        block raise :class:`ConfigError`. ``patches`` ``[B, C, h, w]`` are ``inner``'s final-normalised patches
        through the denoiser, then (``project``) CLIP's projection; ``prefix`` ``[B, P, C]`` passes unchanged
        (projected too). Shapes: :meth:`DenseModel.forward_tokens`."""
        vision = self.backbone.vision
        other = [layer for layer in layers if layer not in (-1, vision.depth - 1)]
        if other:
            raise ConfigError(f"method 'dvt' denoises only the final features: it gives layers=(-1,) (block "
                              f"{vision.depth - 1}), not {other}")
        out = self.inner.dense_tokens(images, (-1,), project=False)[0]
        patches = self.denoiser(out.patches)
        prefix = out.prefix
        if project and vision.has_projection:
            patches = vision.project(patches.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            prefix = vision.project(prefix)
        output = TokenOutput(patches=patches, prefix=prefix, grid=out.grid, layer=out.layer)
        return [output for _ in layers]

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """The inner method's :meth:`DenseModel.encode_text`."""
        return self.inner.encode_text(texts)


OPTIONS = {
    "denoiser": Option(str, "DVT's released denoiser weights: a .pth path (e.g. voc_denoised/"
                            "vit_base_patch14_dinov2.lvd142m.pth) or hf-hub:<org>/<repo>/<file>"),
    "base": Option(str, "the timm model name the denoiser was trained on (default: read from its file name)"),
    "inner": Option(str, "the method whose final features are denoised (raw, maskclip, ...)"),
}


@method_options("dvt", forward=inner_method_options("dvt", "raw, maskclip, ..."), **OPTIONS)
def build(backbone: Backbone, denoiser: str, base: str | None = None, inner: str = "raw",
          **inner_options: Any) -> DenseModel:
    """DVT's stage-2 denoiser (``denoiser=PATH`` or ``hf-hub:…``) on ``backbone``; see the module docstring."""
    from phreg_bench.methods.catalogue import METHODS

    loaded = load_denoiser_file(denoiser)
    base = base or base_from_name(loaded.path)  # a hub file keeps its name in the cache
    check_fit(loaded.module, base, backbone, loaded.source)
    return DVTModel(backbone, METHODS.get(inner)(backbone, **inner_options), loaded, base)
