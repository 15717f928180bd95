"""Adapter files: train, save, load through the benchmark's `phreg` method; refuse other base weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_core_fixtures import one_thread, random_images, tiny_clip  # noqa: F401

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_bench.backbones.builtin import build_tiny_vit
from phreg_bench.backbones.weights import state_dict_sha256
from phreg_bench.methods.phreg import build as build_phreg
from phreg_core.adapter_io import AdapterMismatchError, read_sidecar
from phreg_core.data import TensorImageDataset
from phreg_core.recipe import Recipe, RunOptions
from phreg_core.student import Student
from phreg_core.teacher import default_teacher
from phreg_core.trainer import distill


def clip_backbone(seed: int = 0) -> Backbone:
    vision = tiny_clip(seed=seed)
    identity = BackboneIdentity(name="tiny-clip", family="custom", architecture="tiny", weights_id=f"seed{seed}",
                                weights_sha256=state_dict_sha256(vision.visual))
    return Backbone(vision, identity)


def train(backbone: Backbone, out, grid, size: int, steps: int = 3) -> Student:
    student = Student(backbone.vision, 3, train_grid=grid)
    recipe = Recipe(epochs=10, batch_size=2, lr=1e-3, lr_end=1e-4, views=3)
    options = RunOptions(max_steps=steps, progress=False, out_dir=str(out))
    result = distill(default_teacher(backbone.vision), student, TensorImageDataset(random_images(4, size)), recipe,
                     options, base_name=backbone.name, base_weights_sha256=backbone.identity.weights_sha256)
    assert result.adapter_path == out / "adapter.safetensors"
    return student.eval()


@pytest.mark.parametrize("kind", ["timm", "open_clip"])
def test_round_trip_gives_identical_outputs(tmp_path, kind):
    backbone = build_tiny_vit(seed=0) if kind == "timm" else clip_backbone()
    size = 64 if kind == "timm" else 48
    student = train(backbone, tmp_path, (size // 8, size // 8), size)
    fresh = build_tiny_vit(seed=0) if kind == "timm" else clip_backbone()
    model = build_phreg(fresh, adapter=str(tmp_path / "adapter.safetensors"))
    images = random_images(2, size, seed=9)
    with torch.no_grad():
        for project in (True, False):
            want = student.forward_tokens(images, project=project)[0]
            got = model.forward_tokens(images, project=project)[0]
            assert torch.equal(got.patches, want.patches) and torch.equal(got.prefix, want.prefix)
        # another input size re-interpolates the stored positional embedding: still identical
        other = random_images(1, size + 16, seed=2)
        assert torch.equal(model.forward_tokens(other)[0].patches, student.forward_tokens(other)[0].patches)
    assert model.method_config["adapter_sha256"] == read_sidecar(tmp_path)["tensors_sha256"]
    # the adapter folder works as the path too
    assert torch.equal(build_phreg(fresh, adapter=str(tmp_path)).forward_tokens(images)[0].patches,
                       model.forward_tokens(images)[0].patches)


def test_adapter_holds_only_changed_tensors_and_a_full_sidecar(tmp_path):
    backbone = clip_backbone()
    student = train(backbone, tmp_path, (6, 6), 48)
    tensors = load_file(str(tmp_path / "adapter.safetensors"))
    base = dict(backbone.vision.named_parameters())
    for name, value in tensors.items():
        if name == "registers":
            continue
        relative = name.removeprefix("vision.")
        assert value.shape != base[relative].shape or not torch.equal(value, base[relative]), name
    assert "registers" in tensors and "vision.visual.positional_embedding" in tensors
    assert not any(".resblocks.2.mlp." in n or ".resblocks.2.ln_2." in n for n in tensors)  # unused by MaskCLIP
    assert not any(".resblocks.0." in n or "ln_post" in n for n in tensors)  # frozen
    sidecar = json.loads((tmp_path / "adapter.json").read_text())
    assert sidecar["base"] == {"name": "tiny-clip", "weights_sha256": backbone.identity.weights_sha256}
    assert sidecar["registers"] == 3 and sidecar["unlock"]["last_blocks"] == 2
    assert sidecar["steps"] == 3 and isinstance(sidecar["final_loss"], float)
    assert sidecar["config"]["views"] == 3 and sidecar["student"]["last_block"]["attention"] == "identity"
    assert sidecar["teacher"]["last_block"]["attention"] == "kk+gaussian"
    assert student.num_registers == 3


def test_mismatched_base_weights_are_refused(tmp_path):
    train(build_tiny_vit(seed=0), tmp_path, (8, 8), 64, steps=1)
    with pytest.raises(AdapterMismatchError, match="weights sha256"):
        build_phreg(build_tiny_vit(seed=1), adapter=str(tmp_path / "adapter.safetensors"))


def test_damaged_adapter_is_refused(tmp_path):
    train(build_tiny_vit(seed=0), tmp_path, (8, 8), 64, steps=1)
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(AdapterMismatchError, match="sha256"):
        build_phreg(build_tiny_vit(seed=0), adapter=str(path))
    with pytest.raises(ValueError, match="needs option 'adapter'"):
        build_phreg(build_tiny_vit(seed=0))
