"""Import the authors' released PH-Reg students (``0raiser0/PH-Reg``) as this project's adapters.

Two layouts, both plain state dicts read with ``torch.load(weights_only=True)`` (or safetensors):

``official-clip`` — their CLIP student, a ``ModifiedImageEncoder`` (``models/OpenaiMaskCLIP/clip_reg.py``)
as built and loaded strictly by ``zero_shot/segmentor.py`` (``num_register_tokens=16``,
``input_resolutions=(448, 448)``, ``patch_size=16``). Keys: ``register_tokens`` ``[16, C]`` and the whole
OpenAI-CLIP image tower under ``original_image_encoder.`` (``conv1.weight``, ``class_embedding``,
``positional_embedding`` stored at the 448-px grid ``[1 + 28², C]``, ``ln_pre``,
``transformer.resblocks.<i>.{attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc,
mlp.c_proj, ln_2}``, ``ln_post``, ``proj``). Their forward: patches + CLS (``class_embedding`` + pos-emb,
re-interpolated bicubically from the stored 28×28 table for other sizes), then the registers appended
(no pos-emb), ``ln_pre``, blocks 0…L−2, the last block as the MaskCLIP value path
``out_proj(W_v ln_1(x) + b_v)`` (no attention, residual or FFN), ``ln_post``, ``@ proj``; patches are
``[:, 1:-16]``. That is :class:`phreg_core.student.Student` with ``last_block="maskclip"`` (the CLIP
default), append placement and ``train_grid=(28, 28)``. Their trainable set (``student_model_initialization``):
registers, positional embedding, ``conv1``, ``resblocks[-2]`` and ``resblocks[-1]`` — the official unlock set.

``official-dinov2`` — their DINOv2 student ``RegDINOv2Base`` (``DINOv2_full/evaluation/depth/dvt/models/
ours_dinov2_new.py``; the segmentation probe ``DINOv2_full/evaluation/segmentation/fine-tune/seg_models/
backbone/DINOv2_value.py`` builds it with ``num_registers=16`` and loads the file strictly). Keys:
``registers`` ``[1, 16, C]`` and a Hugging Face ``Dinov2Model`` under ``model.``, with the same tensors again
under the aliases ``embed.`` (= ``model.embeddings.``), ``encoder.`` (= ``model.encoder.``) and ``layernorm.``
(= ``model.layernorm.``), since those submodules are registered twice. Their forward: HF embeddings (CLS +
pos-emb), the registers prepended *before* CLS, every layer unchanged, final layernorm; patches are
``[:, 17:]``. Attention is permutation-equivariant and registers carry no pos-emb, so this equals the
project's student with registers right after CLS (timm ``reg_token`` placement) up to float rounding.
Trainable in their code (``DINOv2_full/distill_main.py``): registers, position embeddings, the patch
projection (weight and bias) and ``encoder.layer[-1]`` — the official DINOv2 unlock set. HF tensors map
onto timm's ``vit_base_patch14_dinov2`` names (query/key/value concatenated into ``qkv``; ``layer_scale*.lambda1``
→ ``ls*.gamma``); ``mask_token`` is only used for masked pre-training inputs and is dropped.

Every tensor their training kept frozen must equal the base backbone's weights (else the file was distilled
from other weights and is refused); the adapter records the base name and weights sha256, so ``phreg-bench
run --backbone <base> --adapter DIR`` refuses any other base later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from phreg_bench.backbones.base import Backbone
from phreg_bench.backbones.weights import read_state_dict
from phreg_core.errors import PhregError
from phreg_core.hashing import file_sha256
from phreg_core.student import Student
from phreg_core.towers import OpenClipTokenViT, TimmTokenViT

__all__ = ["FORMATS", "ImportLayoutError", "BaseMismatchError", "import_official"]

OFFICIAL_REGISTERS = 16  # zero_shot/segmentor.py num_register_tokens=16; DINOv2_value.py num_registers=16
OFFICIAL_CLIP_RESOLUTION = 448  # zero_shot/segmentor.py input_resolutions=(448, 448)
FROZEN_RTOL, FROZEN_ATOL = 1e-5, 1e-6  # frozen tensors must equal the base weights up to float storage noise
REFERENCES = {
    "official-clip": "0raiser0/PH-Reg models/OpenaiMaskCLIP/clip_reg.py ModifiedImageEncoder, loaded by "
                     "zero_shot/segmentor.py DistilledMaskCLIP",
    "official-dinov2": "0raiser0/PH-Reg DINOv2_full RegDINOv2Base (evaluation/depth/dvt/models/ours_dinov2_new.py), "
                       "loaded by evaluation/segmentation/fine-tune/seg_models/backbone/DINOv2_value.py",
}


class ImportLayoutError(PhregError, ValueError):
    """A file whose keys or shapes are not the layout the chosen ``--format`` expects."""


class BaseMismatchError(PhregError, ValueError):
    """A student whose frozen tensors differ from the base backbone's weights."""


# A converter maps their state dict to ``{student parameter path: (tensor, their key(s) it came from)}``.
Convert = Callable[[dict[str, Tensor]], dict[str, tuple[Tensor, str]]]


@dataclass(frozen=True)
class Layout:
    """What a file of one format must hold (their key -> shape) and how it maps onto the student."""

    shapes: dict[str, tuple[int, ...]]
    convert: Convert  # their state dict -> {student parameter path: (tensor, their key)}
    aliases: dict[str, str]  # alias key -> canonical key (tensors that must be identical)
    unused: tuple[str, ...] = ()  # keys that exist in their layout but have no role at inference


# -- the CLIP student (ModifiedImageEncoder) -------------------------------------------------------------------
def _clip_block_shapes(width: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """OpenAI CLIP ``ResidualAttentionBlock`` / their ``ModifiedResBlock`` (same parameter names)."""
    return {
        "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
        "ln_1.weight": (width,), "ln_1.bias": (width,),
        "mlp.c_fc.weight": (hidden, width), "mlp.c_fc.bias": (hidden,),
        "mlp.c_proj.weight": (width, hidden), "mlp.c_proj.bias": (width,),
        "ln_2.weight": (width,), "ln_2.bias": (width,),
    }


def clip_layout(vision: OpenClipTokenViT, registers: int, resolution: int) -> Layout:
    width, patch, out = vision.embed_dim, vision.patch_size, vision.output_dim
    hidden = vision.blocks[0].mlp.c_fc.out_features
    if resolution % patch:
        raise ImportLayoutError(f"--resolution {resolution} is not a multiple of the patch size {patch}")
    grid = resolution // patch
    enc = "original_image_encoder."
    shapes: dict[str, tuple[int, ...]] = {
        "register_tokens": (registers, width),
        enc + "class_embedding": (width,),
        enc + "positional_embedding": (1 + grid * grid, width),
        enc + "proj": (width, out),
        enc + "conv1.weight": (width, 3, patch, patch),
        enc + "ln_pre.weight": (width,), enc + "ln_pre.bias": (width,),
        enc + "ln_post.weight": (width,), enc + "ln_post.bias": (width,),
    }
    for index in range(vision.depth):
        for key, shape in _clip_block_shapes(width, hidden).items():
            shapes[f"{enc}transformer.resblocks.{index}.{key}"] = shape

    def convert(state: dict[str, Tensor]) -> dict[str, tuple[Tensor, str]]:
        out_state = {"registers": (state["register_tokens"], "register_tokens")}
        for key, value in state.items():
            if key.startswith(enc):  # open_clip kept OpenAI's names for the image tower
                out_state["vision.visual." + key[len(enc):]] = (value, key)
        return out_state

    return Layout(shapes, convert, aliases={})


# -- the DINOv2 student (RegDINOv2Base around a HF Dinov2Model) -------------------------------------------------
HF_ALIASES = {"embed.": "model.embeddings.", "encoder.": "model.encoder.", "layernorm.": "model.layernorm."}


def dinov2_layout(vision: TimmTokenViT, registers: int) -> Layout:
    model = vision.model
    width, patch, depth = vision.embed_dim, vision.patch_size, vision.depth
    hidden = model.blocks[0].mlp.fc1.out_features
    rows = model.pos_embed.shape[1]
    emb, layer = "model.embeddings.", "model.encoder.layer."
    shapes: dict[str, tuple[int, ...]] = {
        "registers": (1, registers, width),
        emb + "cls_token": (1, 1, width),
        emb + "mask_token": (1, width),
        emb + "position_embeddings": (1, rows, width),
        emb + "patch_embeddings.projection.weight": (width, 3, patch, patch),
        emb + "patch_embeddings.projection.bias": (width,),
        "model.layernorm.weight": (width,), "model.layernorm.bias": (width,),
    }
    block = {
        "norm1.weight": (width,), "norm1.bias": (width,),
        "attention.attention.query.weight": (width, width), "attention.attention.query.bias": (width,),
        "attention.attention.key.weight": (width, width), "attention.attention.key.bias": (width,),
        "attention.attention.value.weight": (width, width), "attention.attention.value.bias": (width,),
        "attention.output.dense.weight": (width, width), "attention.output.dense.bias": (width,),
        "layer_scale1.lambda1": (width,),
        "norm2.weight": (width,), "norm2.bias": (width,),
        "mlp.fc1.weight": (hidden, width), "mlp.fc1.bias": (hidden,),
        "mlp.fc2.weight": (width, hidden), "mlp.fc2.bias": (width,),
        "layer_scale2.lambda1": (width,),
    }
    for index in range(depth):
        shapes.update({f"{layer}{index}.{key}": shape for key, shape in block.items()})
    aliases = {}
    for alias, canonical in HF_ALIASES.items():
        for key in list(shapes):
            if key.startswith(canonical):
                aliases[alias + key[len(canonical):]] = key
    shapes.update({alias: shapes[key] for alias, key in aliases.items()})

    def convert(state: dict[str, Tensor]) -> dict[str, tuple[Tensor, str]]:
        t = "vision.model."
        names = {  # timm name -> HF name (one tensor each)
            "cls_token": emb + "cls_token", "pos_embed": emb + "position_embeddings",
            "patch_embed.proj.weight": emb + "patch_embeddings.projection.weight",
            "patch_embed.proj.bias": emb + "patch_embeddings.projection.bias",
            "norm.weight": "model.layernorm.weight", "norm.bias": "model.layernorm.bias",
        }
        for index in range(depth):
            src, dst = f"{layer}{index}.", f"blocks.{index}."
            for part in ("weight", "bias"):
                names[dst + f"attn.proj.{part}"] = src + f"attention.output.dense.{part}"
                names.update({dst + f"{norm}.{part}": src + f"{norm}.{part}" for norm in ("norm1", "norm2")})
                names.update({dst + f"mlp.{fc}.{part}": src + f"mlp.{fc}.{part}" for fc in ("fc1", "fc2")})
            names[dst + "ls1.gamma"] = src + "layer_scale1.lambda1"
            names[dst + "ls2.gamma"] = src + "layer_scale2.lambda1"
        out = {t + ours: (state[theirs], theirs) for ours, theirs in names.items()}
        out["registers"] = (state["registers"][0], "registers")
        for index in range(depth):  # timm fuses query, key and value into one qkv projection, in that order
            attn = f"{layer}{index}.attention.attention."
            for part in ("weight", "bias"):
                keys = [attn + f"{name}.{part}" for name in ("query", "key", "value")]
                out[f"{t}blocks.{index}.attn.qkv.{part}"] = (torch.cat([state[k] for k in keys]),
                                                             attn + f"{{query,key,value}}.{part}")
        return out

    return Layout(shapes, convert, aliases=aliases, unused=(emb + "mask_token",))


FORMATS = ("official-clip", "official-dinov2")


# -- checks --------------------------------------------------------------------------------------------------
def check_layout(state: dict[str, Tensor], layout: Layout, path: Path, fmt: str, hint: str) -> None:
    """Refuse a file whose keys or shapes differ from ``layout``, listing every key that does not fit."""
    missing = sorted(set(layout.shapes) - set(state))
    unexpected = sorted(set(state) - set(layout.shapes))
    wrong = sorted(f"{k} {tuple(state[k].shape)} (expected {layout.shapes[k]})"
                   for k in set(layout.shapes) & set(state) if tuple(state[k].shape) != layout.shapes[k])
    if not (missing or unexpected or wrong):
        differing = sorted(alias for alias, key in layout.aliases.items() if not torch.equal(state[alias], state[key]))
        if differing:
            raise ImportLayoutError(f"{path}: tensors that their model shares under two names differ: "
                                    f"{', '.join(differing[:8])}; the file was edited or is damaged")
        return
    lines = [f"{path} does not have the {fmt} layout ({REFERENCES[fmt]}):"]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            lines.append(f"  {label} ({len(keys)}): {', '.join(keys[:15])}{' …' if len(keys) > 15 else ''}")
    lines.append(f"  {hint}")
    raise ImportLayoutError("\n".join(lines))


def _parameters(student: Student) -> tuple[dict[str, torch.nn.Parameter], dict[int, str]]:
    named = dict(student.named_parameters())
    return named, {id(p): name for name, p in named.items()}


def split_against_base(student: Student, converted: dict[str, tuple[Tensor, str]], path: Path,
                       base_name: str) -> tuple[dict[str, Tensor], int]:
    """``{student name: tensor}`` of the trainable tensors; frozen ones are compared with the base weights."""
    named, canonical = _parameters(student)
    trainable: dict[str, Tensor] = {}
    differing: list[str] = []
    checked = 0
    for target, (value, theirs) in converted.items():
        try:
            param = student.get_parameter(target)
        except AttributeError as error:
            raise ImportLayoutError(f"{path}: the base backbone {base_name!r} has no parameter {target!r} to "
                                    "receive the file's tensor; is it the architecture the student was made "
                                    "from?") from error
        name = canonical[id(param)]
        value = value.detach().to(param.dtype)
        if tuple(value.shape) != tuple(param.shape):
            raise ImportLayoutError(f"{path}: {theirs} has shape {tuple(value.shape)}, the base backbone "
                                    f"{base_name!r} has {tuple(param.shape)}")
        if param.requires_grad:
            trainable[name] = value
            continue
        checked += 1
        if not torch.allclose(value, param.detach(), rtol=FROZEN_RTOL, atol=FROZEN_ATOL):
            delta = (value - param.detach()).abs().max().item()
            differing.append(f"{theirs} (max |Δ| {delta:.3g})")
    if differing:
        raise BaseMismatchError(
            f"{path}: {len(differing)} tensors that the authors' training kept frozen differ from the weights of "
            f"the base backbone {base_name!r}: {', '.join(differing[:8])}{' …' if len(differing) > 8 else ''}. "
            "The student was distilled from other base weights: pass those with --weights (or choose the "
            "matching --backbone)")
    return trainable, checked


# -- the import ------------------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    adapter_path: Path
    sidecar_path: Path
    student: Student
    info: dict[str, Any]


def build_student(fmt: str, backbone: Backbone, registers: int, resolution: int) -> tuple[Student, Layout]:
    """The project's student the authors' file is loaded into, and the layout that file must have."""
    vision = backbone.vision
    if fmt == "official-clip":
        if not isinstance(vision, OpenClipTokenViT):
            raise ImportLayoutError(f"--format official-clip needs an open_clip CLIP backbone (the authors' student "
                                    f"is OpenAI CLIP ViT-B/16); {backbone.name!r} is {type(vision).__name__}")
        layout = clip_layout(vision, registers, resolution)
        grid = resolution // vision.patch_size
        # 0raiser0/PH-Reg zero_shot/models/OpenaiMaskCLIP/clip_reg.py ModifiedImageEncoder: the stored 28×28
        # table is resampled to other grids with F.interpolate(size=..., mode="bicubic") (no offset)
        student = Student(vision, registers, placement="append", last_block="maskclip", unlock="official",
                          train_grid=(grid, grid), resample_pos_embed=True, project=True, pos_resample="bicubic")
    elif fmt == "official-dinov2":
        if not isinstance(vision, TimmTokenViT) or vision.num_builtin_registers or \
                getattr(vision.model.blocks[0].mlp, "fc1", None) is None or \
                not hasattr(vision.model.blocks[0].ls1, "gamma"):
            raise ImportLayoutError(f"--format official-dinov2 needs a timm DINOv2 ViT without registers (the authors' "
                                    f"student is facebook/dinov2-base = dinov2-vit-b14); {backbone.name!r} is not")
        layout = dinov2_layout(vision, registers)
        # the authors' DINOv2 student runs HF Dinov2Model (transformers 4.37.2, pinned by 0raiser0/PH-Reg), whose
        # interpolate_pos_encoding is the offset-0.1 bicubic call
        student = Student(vision, registers, placement="prefix", last_block=None, unlock="official", project=False,
                          pos_resample="bicubic-offset")
    else:
        raise ImportLayoutError(f"unknown --format {fmt!r}; choose from {', '.join(FORMATS)}")
    return student, layout


def import_official(fmt: str, file: str | Path, backbone: Backbone, out_dir: str | Path, *,
                    registers: int = OFFICIAL_REGISTERS, resolution: int = OFFICIAL_CLIP_RESOLUTION) -> ImportResult:
    """Convert the authors' student ``file`` (format ``fmt``) on ``backbone`` into ``out_dir/adapter.*``."""
    from phreg_core.adapter_io import save_adapter

    path = Path(file).expanduser()
    sha = backbone.identity.weights_sha256
    if sha is None:
        raise BaseMismatchError(f"backbone {backbone.name!r} reports no weights sha256, so the adapter could not be "
                                "tied to its base weights; use a catalogue backbone or --weights PATH")
    state = read_state_dict(path)
    student, layout = build_student(fmt, backbone, registers, resolution)
    hint = (f"--registers {registers}" + (f" and --resolution {resolution}" if fmt == "official-clip" else "")
            + f" set the expected shapes; the base {backbone.name!r} sets the rest (width {backbone.embed_dim}, "
            f"patch {backbone.patch_size}, {backbone.depth} blocks)")
    check_layout(state, layout, path, fmt, hint)
    converted = layout.convert(state)
    trainable, checked = split_against_base(student, converted, path, backbone.name)
    student.load_changed_state(trainable)
    student.eval()
    source = {"format": fmt, "file": path.name, "file_sha256": file_sha256(path), "reference": REFERENCES[fmt],
              "registers": registers, "frozen_tensors_checked": checked,
              "dropped_keys": list(layout.unused)}
    if fmt == "official-clip":
        source["resolution"] = resolution
    teacher = ({"kind": "official", "last_block": "naclip", "gaussian_std": 5.0, "project": True}
               if fmt == "official-clip" else {"kind": "official", "last_block": None, "project": False})
    tensors_path, sidecar_path = save_adapter(
        student, Path(out_dir) / "adapter.safetensors", base_name=backbone.name, base_weights_sha256=sha,
        config={"imported": True}, teacher=teacher, extra={"imported_from": source})
    return ImportResult(tensors_path, sidecar_path, student, source)
