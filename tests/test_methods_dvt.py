"""Method ``dvt``: DVT's stage-2 denoiser equals the authors' module on identical random weights, reads their
checkpoint layout, refuses weights that do not fit, and runs end to end on the ovseg and linseg fixtures."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from fixtures_probe import SEG_OVERRIDES, write_voc
from fixtures_seg import make_voc
from torch import nn

from phreg_bench.backbones.builtin import build_tiny_vit
from phreg_bench.backbones.hub import HubUnavailableError
from phreg_bench.backbones.timm_backbones import build as build_timm
from phreg_bench.backbones.weights import WeightsError
from phreg_bench.cli import main
from phreg_bench.methods.dvt import DVTMismatchError, load_denoiser_file
from phreg_bench.registries import METHODS
from phreg_bench.results.store import read_result


class ReferenceDenoiser(nn.Module):
    """Jiawei-Yang/Denoising-ViT dvt/models/online_denoiser.py `Denoiser` (vit=None), transcribed literally."""

    def __init__(self, noise_map_height=37, noise_map_width=37, feat_dim=768, enable_pe=True, num_blocks=1):
        from timm.models.vision_transformer import Block, Mlp

        super().__init__()
        self.vit = None
        self.denoiser = Block(dim=feat_dim, num_heads=feat_dim // 64, mlp_ratio=4, qkv_bias=True, qk_norm=False,
                              init_values=None, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
                              mlp_layer=Mlp)
        if num_blocks > 1:
            self.denoiser = nn.Sequential(*[
                Block(dim=feat_dim, num_heads=feat_dim // 64, mlp_ratio=4, qkv_bias=True, qk_norm=False,
                      init_values=None, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
                      mlp_layer=Mlp) for _ in range(num_blocks)])
        self.pos_embed = None
        if enable_pe:
            seq_len = noise_map_height * noise_map_width
            self.pos_embed = nn.Parameter(torch.randn(1, seq_len, feat_dim) * 0.02)

    def forward(self, x):
        from timm.layers import resample_abs_pos_embed

        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        if self.pos_embed is not None:
            x = x + resample_abs_pos_embed(self.pos_embed, (h, w), num_prefix_tokens=0)
        x = self.denoiser(x)
        x = x.reshape(b, h, w, c)
        return x


def random_reference(width=64, grid=5, num_blocks=1, seed=0) -> ReferenceDenoiser:
    torch.manual_seed(seed)
    ref = ReferenceDenoiser(grid, grid, width, num_blocks=num_blocks)
    with torch.no_grad():  # not the init values: every tensor random, so a swapped key would show
        for tensor in ref.state_dict().values():
            tensor.copy_(torch.randn_like(tensor) * 0.2 + (1.0 if tensor.dim() == 1 else 0.0))
    return ref.eval()


def save_dvt_checkpoint(ref: nn.Module, path: Path) -> Path:
    """The layout of DVT's released files: main_denoiser.py `to_save` (vit.* keys dropped)."""
    state = {k: v for k, v in ref.state_dict().items() if "vit." not in k}
    optimizer = torch.optim.AdamW(ref.parameters(), betas=(0.9, 0.999), weight_decay=1e-5)
    torch.save({"denoiser": state, "optimizer": optimizer.state_dict(), "step": 49999}, path)
    return path


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_denoiser_equals_the_reference_module(tmp_path, num_blocks):
    ref = random_reference(num_blocks=num_blocks)
    loaded = load_denoiser_file(save_dvt_checkpoint(ref, tmp_path / "dvt.pth"))
    assert loaded.module.grid == (5, 5) and loaded.module.num_blocks == num_blocks
    for height, width in ((5, 5), (7, 9), (3, 4), (37, 37)):  # the training grid, larger, smaller, DVT's 518 px
        feats = torch.randn(2, height, width, 64)
        with torch.no_grad():
            want = ref(feats)
            got = loaded.module(feats.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        assert (got - want).abs().max() <= 1e-6, (height, width)


def test_method_equals_dvt_on_timm_features(tmp_path):
    """The whole DVT forward: timm's forward_intermediates(norm=True) of the last block, then the denoiser."""
    backbone = build_timm("vit_small_patch16_224", random_init=True, reduced={"width": 64, "heads": 2})
    ref = random_reference(grid=4)
    model = METHODS.get("dvt")(backbone, denoiser=str(save_dvt_checkpoint(ref, tmp_path / "d.pth")))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        vit = backbone.vision.model  # DVT's PretrainedViTWrapper.get_intermediate_layers, transcribed
        vit_outputs = vit.forward_intermediates(images, [len(vit.blocks) - 1], return_prefix_tokens=False,
                                                norm=True, output_fmt="NCHW", intermediates_only=True)
        want = ref(vit_outputs[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        got = model.forward_tokens(images, project=False)[0]
    assert (got.patches - want).abs().max() <= 1e-6
    raw = METHODS.get("raw")(backbone).forward_tokens(images, project=False)[0]
    assert torch.equal(got.prefix, raw.prefix)  # CLS passes through
    assert model.method_config["width"] == 64 and model.method_config["layer"] == 1


def test_projection_follows_the_denoiser_on_clip(tmp_path):
    from fixtures_seg import tiny_clip_backbone

    backbone = tiny_clip_backbone()
    ref = random_reference(grid=4)
    model = METHODS.get("dvt")(backbone, denoiser=str(save_dvt_checkpoint(ref, tmp_path / "d.pth")))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = model.forward_tokens(images, project=False)[0].patches
        projected = model.forward_tokens(images, project=True)[0].patches
        want = (plain.permute(0, 2, 3, 1) @ backbone.vision.visual.proj).permute(0, 3, 1, 2)
    assert projected.shape[1] == backbone.output_dim and torch.allclose(projected, want, atol=1e-6)


def test_safetensors_copy_reads_the_same(tmp_path):
    from safetensors.torch import save_file

    ref = random_reference()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "dvt.safetensors"))
    feats = torch.randn(1, 6, 6, 64)
    with torch.no_grad():
        got = load_denoiser_file(tmp_path / "dvt.safetensors").module(feats.permute(0, 3, 1, 2))
        assert (got.permute(0, 2, 3, 1) - ref(feats)).abs().max() <= 1e-6


def test_layout_errors_list_every_key(tmp_path):
    state = dict(random_reference().state_dict())
    state["denoiser.extra.weight"] = torch.zeros(3)
    del state["denoiser.mlp.fc2.bias"]
    state["denoiser.attn.proj.weight"] = torch.zeros(64, 32)
    torch.save({"denoiser": state}, tmp_path / "bad.pth")
    with pytest.raises(DVTMismatchError) as error:
        load_denoiser_file(tmp_path / "bad.pth")
    text = str(error.value)
    assert "missing (1): denoiser.mlp.fc2.bias" in text and "unexpected (1): denoiser.extra.weight" in text
    assert "denoiser.attn.proj.weight (64, 32) (expected (64, 64))" in text


def test_pickled_code_is_refused(tmp_path):
    torch.save({"denoiser": {"pos_embed": torch.zeros(1, 4, 64)}, "args": partial(print)}, tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        load_denoiser_file(tmp_path / "x.pth")


def test_backbones_that_do_not_fit_are_refused_naming_both(tmp_path):
    wide = random_reference(width=128)
    with pytest.raises(DVTMismatchError, match=r"width 128 but backbone 'tiny-vit' has width 64"):
        METHODS.get("dvt")(build_tiny_vit(), denoiser=str(save_dvt_checkpoint(wide, tmp_path / "w.pth")))
    # a file named after the model it was trained on: planted-vit is patch 4, 5 blocks; tiny-vit patch 8, 4 blocks
    named = save_dvt_checkpoint(random_reference(), tmp_path / "planted-vit.pth")
    with pytest.raises(DVTMismatchError) as error:
        METHODS.get("dvt")(build_tiny_vit(), denoiser=str(named))
    assert "trained on 'planted-vit': patch 4, width 64, 5 blocks (features of block 4)" in str(error.value)
    assert "backbone 'tiny-vit' has patch 8, width 64, 4 blocks (features of block 3)" in str(error.value)
    # same geometry, another model: refused unless the user says so
    same = save_dvt_checkpoint(random_reference(), tmp_path / "vit_base_patch8_224.dino.pth")
    with pytest.raises(DVTMismatchError, match="learns one model's artifacts"):
        METHODS.get("dvt")(build_tiny_vit(), denoiser=str(same))
    model = METHODS.get("dvt")(build_tiny_vit(), denoiser=str(same), base="tiny-vit")
    assert model.method_config["base"] == "tiny-vit"
    with pytest.raises(ValueError, match="needs option 'denoiser'.*DVT's released denoiser weights"):
        METHODS.get("dvt")(build_tiny_vit())


def test_offline_hub_denoiser_fails_fast_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as error:
        METHODS.get("dvt")(build_tiny_vit(), denoiser="hf-hub:jjiaweiyang/DVT/voc_denoised/tiny.pth")
    assert time.perf_counter() - start < 5
    text = str(error.value)
    for needed in ("jjiaweiyang/DVT", "voc_denoised/tiny.pth", str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE",
                   "-o denoiser=PATH"):
        assert needed in text, needed
    assert "--weights" not in text
    with pytest.raises(DVTMismatchError, match="names a repo but no file"):
        METHODS.get("dvt")(build_tiny_vit(), denoiser="hf-hub:jjiaweiyang/DVT")


def test_runs_end_to_end_on_ovseg_and_linseg_fixtures(tmp_path):
    """`phreg-bench run --method dvt` writes valid results for an open-vocabulary and a probe task."""
    data = tmp_path / "data"
    make_voc(data)  # ovseg/voc21 layout (val)
    write_voc(tmp_path / "probe", n_train=4, n_val=2)  # linseg/voc21 layout (train_aug + val)
    denoiser = save_dvt_checkpoint(random_reference(grid=4), tmp_path / "dvt.pth")
    template = tmp_path / "one.txt"
    template.write_text("a photo of a {c}.\n")
    results = tmp_path / "results"
    common = ["--method", "dvt", "-o", f"denoiser={denoiser}", "--results-dir", str(results),
              "--cache-dir", str(tmp_path / "cache"), "--batch-size", "2"]
    assert main(["run", "--backbone", "fixtures_seg:tiny_clip_factory", "--tasks", "ovseg/voc21",
                 "--data-root", str(data), "--protocol-override", "resize=40",
                 "--protocol-override", f"templates={template}", *common]) == 0
    overrides = [f"--protocol-override={k}={v}" for k, v in {**SEG_OVERRIDES, "iters": 10}.items()]
    assert main(["run", "--backbone", "tiny-vit", "--random-init", "--tasks", "linseg/voc21",
                 "--data-root", str(tmp_path / "probe"), *overrides, *common]) == 0
    assert main(["results", "validate", str(results)]) == 0
    records = [read_result(path) for path in sorted(results.rglob("*.json"))]
    assert sorted(r.identity.task.name for r in records) == ["linseg/voc21", "ovseg/voc21"]
    for record in records:
        config = record.identity.method.config
        assert record.identity.method.name == "dvt" and config["grid"] == [4, 4] and config["num_blocks"] == 1
        assert len(config["denoiser_sha256"]) == 64 and config["inner"]["name"] == "raw"
        assert json.dumps(record.to_json(), allow_nan=False)
