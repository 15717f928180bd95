"""The method contract, for every registered method on every backbone family (the built-in ViT, a timm
DINOv2 with registers, an open_clip CLIP with its text tower; tiny random weights).

A method's :class:`~phreg_bench.methods.base.DenseModel` gives, for normalised images ``[B, 3, H, W]`` whose
sides are multiples of the patch size, final-layer tokens with patches ``[B, C, H/p, W/p]`` (``C`` the width,
or the joint-space width with ``project=True``) and prefix tokens ``[B, P, width]`` (``P`` at least the CLS
and the backbone's registers), finite, each image's tokens independent of the rest of the batch, and a
JSON-able description. Methods that read files get tiny generated ones in their real formats.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_methods_dvt import random_reference, save_dvt_checkpoint

from phreg_bench.methods.base import DenseModel
from phreg_bench.registries import BACKBONES, METHODS
from phreg_core.adapter_io import save_adapter
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


@pytest.mark.parametrize("method", METHODS.names())
@torch.no_grad()
def test_method_contract(method, backbone, tmp_path):
    recipe = OPTIONS.get(method)
    model = METHODS.get(method)(backbone, **(recipe(backbone, tmp_path) if recipe else {}))
    assert isinstance(model, DenseModel) and model.describe()["name"] == method
    json.loads(canonical_json(model.describe()))  # the config enters the config hash: plain, finite JSON

    rows, cols = 4, 5  # not square: a row/column mix-up shows
    images = backbone.normalize(torch.rand(2, 3, rows * backbone.patch_size, cols * backbone.patch_size))
    out = model.forward_tokens(images, project=False)
    assert out.patches.shape == (2, backbone.embed_dim, rows, cols) and out.grid == (rows, cols)
    assert out.prefix.shape[0] == 2 and out.prefix.shape[2] == backbone.embed_dim
    assert out.prefix.shape[1] >= 1 + backbone.num_registers
    assert torch.isfinite(out.patches).all() and torch.isfinite(out.prefix).all()

    alone = model.forward_tokens(images[1:], project=False)  # image 1 without image 0 beside it
    torch.testing.assert_close(alone.patches, out.patches[1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone.prefix, out.prefix[1:], atol=1e-5, rtol=1e-5)

    projected = model.forward_tokens(images, project=True)
    assert projected.patches.shape == (2, backbone.output_dim, rows, cols)
    if backbone.has_text:
        assert model.encode_text(["a photo of a cat", "a dog"]).shape == (2, backbone.output_dim)
