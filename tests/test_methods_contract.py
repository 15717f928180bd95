"""The method contract, for every registered method on every backbone family (the built-in ViT, a timm
DINOv2 with registers, an open_clip CLIP with its text tower; tiny random weights).

A method's :class:`~phreg_bench.methods.base.DenseModel` gives, for normalised images ``[B, 3, H, W]`` whose
sides are multiples of the patch size (others: ``ConfigError``), a list with one ``TokenOutput`` per requested
layer: patches ``[B, C, H/p, W/p]`` (``C`` the width, or the joint-space width with ``project=True``; the
default is ``project=False``) and prefix tokens ``[B, P, C]`` (``P`` = CLS + the backbone's registers + the
method's own), finite, each image's tokens independent of the rest of the batch, and a JSON-able description.
``layers`` are honoured in order, or refused with a ``ConfigError`` naming the method (``dvt``: final layer
only). Methods that read files get tiny generated ones in their real formats.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_methods_dvt import random_reference, save_dvt_checkpoint

from phreg_bench.methods.base import DenseModel
from phreg_bench.registries import BACKBONES, METHODS
from phreg_core.adapter_io import save_adapter
from phreg_core.errors import ConfigError
from phreg_core.hashing import canonical_json
from phreg_core.student import Student

SMALL = {"width": 64, "heads": 2}  # DVT's denoiser blocks have width // 64 heads
BACKBONE_FAMILIES = {
    "builtin": ("tiny-vit", {}),
    "timm": ("dinov2-vit-s14-reg4", {"random_init": True, "reduced": SMALL}),
    "open_clip": ("openai-clip-vit-b16", {"random_init": True, "reduced": SMALL}),
}


@pytest.fixture(scope="module", params=sorted(BACKBONE_FAMILIES))
def backbone(request):
    name, options = BACKBONE_FAMILIES[request.param]
    return BACKBONES.get(name)(**options).eval()


def _phreg(backbone, folder):
    student = Student(backbone.vision, 2, seed=0)
    with torch.no_grad():
        student.registers.add_(0.5)  # not the init: the registers must reach the output
    tensors, _ = save_adapter(student, folder / "adapter.safetensors", base_name=backbone.name,
                              base_weights_sha256=backbone.identity.weights_sha256)
    return {"adapter": str(tensors)}


def _dvt(backbone, folder):
    reference = random_reference(width=backbone.embed_dim, grid=4)
    return {"denoiser": str(save_dvt_checkpoint(reference, folder / "denoiser.pth"))}


def _ttr(backbone, folder):
    path = folder / "neurons.json"
    path.write_text(json.dumps({"0": [3, 17], "1": [5]}))  # blocks 0 and 1 exist in every tower here
    return {"neurons": str(path)}


# options (and files) per method; every built-in method needs an entry, a plugin method is tried without options
OPTIONS = {
    "raw": None, "maskclip": None, "maskclip-official": None, "sclip": None, "clearclip": None, "naclip": None,
    "tta": lambda backbone, folder: {"views": 2},
    "phreg": _phreg,
    "dvt": _dvt,
    "ttr": _ttr,
}


def test_every_built_in_method_has_a_contract_case():
    assert {entry.name for entry in METHODS if entry.source == "builtin"} == set(OPTIONS)


# new prefix tokens a method appends after the backbone's CLS and registers (the options above)
EXTRA_PREFIX = {"phreg": 2, "ttr": 1}
# methods that change only the last block: earlier layers are the backbone's own
LAST_BLOCK_ONLY = {"raw", "maskclip", "maskclip-official", "sclip", "clearclip", "naclip"}
# methods that give the final layer only, and refuse others with a ConfigError naming the method
FINAL_ONLY = {"dvt"}


@pytest.mark.parametrize("method", METHODS.names())
@torch.no_grad()
def test_method_contract(method, backbone, tmp_path):
    recipe = OPTIONS.get(method)
    model = METHODS.get(method)(backbone, **(recipe(backbone, tmp_path) if recipe else {}))
    assert isinstance(model, DenseModel) and model.describe()["name"] == method
    json.loads(canonical_json(model.describe()))  # the config enters the config hash: plain, finite JSON
    assert (model.patch_size, model.embed_dim, model.name) == (backbone.patch_size, backbone.embed_dim, backbone.name)
    assert model.has_text == backbone.has_text and model.has_class_token == backbone.vision.has_class_token

    rows, cols = 4, 5  # not square: a row/column mix-up shows
    images = model.normalize(torch.rand(2, 3, rows * backbone.patch_size, cols * backbone.patch_size))
    outputs = model.forward_tokens(images)  # project=False is the default
    assert isinstance(outputs, list) and len(outputs) == 1
    out = outputs[0]
    assert out.patches.shape == (2, backbone.embed_dim, rows, cols) and out.grid == (rows, cols)
    assert out.prefix.shape == (2, 1 + backbone.num_registers + EXTRA_PREFIX.get(method, 0), backbone.embed_dim)
    assert out.layer == backbone.vision.depth - 1
    assert torch.isfinite(out.patches).all() and torch.isfinite(out.prefix).all()

    alone = model.forward_tokens(images[1:])[0]  # image 1 without image 0 beside it
    torch.testing.assert_close(alone.patches, out.patches[1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.prefix, out.prefix[1:], atol=1e-5, rtol=1e-5)

    projected = model.forward_tokens(images, project=True)[0]
    assert projected.patches.shape == (2, backbone.output_dim, rows, cols)
    assert projected.prefix.shape[1:] == (out.prefix.shape[1], backbone.output_dim)
    if backbone.has_text:
        assert model.encode_text(["a photo of a cat", "a dog"]).shape == (2, backbone.output_dim)

    with pytest.raises(ConfigError, match="multiple of the patch size"):
        model.forward_tokens(images[..., : cols * backbone.patch_size - 1])


@pytest.mark.parametrize("method", METHODS.names())
@torch.no_grad()
def test_method_layers(method, backbone, tmp_path):
    """``layers`` are honoured in their order (for a multi-layer head), or refused by name."""
    recipe = OPTIONS.get(method)
    model = METHODS.get(method)(backbone, **(recipe(backbone, tmp_path) if recipe else {}))
    depth, patch = backbone.vision.depth, backbone.patch_size
    images = model.normalize(torch.rand(2, 3, 3 * patch, 4 * patch))
    final = model.forward_tokens(images)[0]
    if method in FINAL_ONLY:
        with pytest.raises(ConfigError, match=f"'{method}'.*layers=\\(-1,\\)"):
            model.forward_tokens(images, layers=(0, -1))
        assert torch.equal(model.forward_tokens(images, layers=(depth - 1,))[0].patches, final.patches)
        return
    outs = model.forward_tokens(images, layers=(-1, 0))
    assert [o.layer for o in outs] == [depth - 1, 0]
    for o in outs:
        assert o.patches.shape == (2, backbone.embed_dim, 3, 4) and o.prefix.shape == final.prefix.shape
    torch.testing.assert_close(outs[0].patches, final.patches, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(outs[1].patches, final.patches)
    if method in LAST_BLOCK_ONLY:
        torch.testing.assert_close(outs[1].patches, backbone.forward_tokens(images, (0,))[0].patches)
    with pytest.raises(ConfigError, match="do not exist"):
        model.forward_tokens(images, layers=(depth,))


@pytest.mark.parametrize("method", ["raw", "naclip", "tta"])
@torch.no_grad()
def test_reduced_precision_runs_inside_the_model(method, backbone, tmp_path):
    """``set_precision("bf16")``: the model autocasts its own forward and gives float32 outputs near fp32's."""
    recipe = OPTIONS.get(method)
    model = METHODS.get(method)(backbone, **(recipe(backbone, tmp_path) if recipe else {}))
    images = model.normalize(torch.rand(1, 3, 2 * backbone.patch_size, 2 * backbone.patch_size))
    full = model.forward_tokens(images)[0]
    low = model.set_precision("bf16").forward_tokens(images)[0]
    assert low.patches.dtype == low.prefix.dtype == torch.float32
    assert not torch.equal(low.patches, full.patches)
    assert float((low.patches - full.patches).abs().max() / full.patches.abs().max()) < 0.1
    with pytest.raises(ConfigError, match="precision"):
        model.set_precision("fp8")
