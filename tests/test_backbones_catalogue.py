"""Every catalogue entry: metadata matches the real architecture, and the dense contract holds.

Metadata is checked against the full-size architecture built on the ``meta`` device (no memory, no
weights). The contract and the equality with timm / open_clip's own outputs run on the reduced config of
the same code path (``reduced=True``: 2 blocks, width 48, 4×4 grid), random weights, no network.
"""

from __future__ import annotations

import pytest
import torch

from phreg_bench.backbones.base import Backbone
from phreg_bench.registries import BACKBONES

NAMED = [e.name for e in BACKBONES if e.metadata.get("family") in ("timm", "open_clip") and not e.name.endswith(":")]
TOL = 1e-5


def test_catalogue_has_the_required_entries():
    for name in ("openai-clip-vit-b16", "openai-clip-vit-b32", "openai-clip-vit-l14", "openclip-vit-b16-laion2b",
                 "dfn-clip-vit-b16", "metaclip-vit-b16", "dinov2-vit-s14", "dinov2-vit-b14", "dinov2-vit-l14",
                 "dinov2-vit-b14-reg4", "deit-vit-b16", "deit3-vit-b16", "augreg-vit-b16"):
        assert name in NAMED
    for prefix in ("timm:", "open_clip:", "hf-hub:"):
        assert prefix in BACKBONES
    assert BACKBONES.canonical("clip-vit-b16") == "openai-clip-vit-b16"
    assert BACKBONES.canonical("dinov2-reg") == "dinov2-vit-b14-reg4"


def _full_meta_vision(entry):
    """The full-size image tower on the meta device, and the hub repo its weights come from."""
    from phreg_core.towers import OpenClipTokenViT, TimmTokenViT

    argument = entry.metadata["argument"]
    if entry.metadata["family"] == "timm":
        from phreg_bench.backbones import timm_backbones

        with torch.device("meta"):
            model = timm_backbones.create_model(argument)
        timm_backbones.check_supported(model, argument)
        return TimmTokenViT(model), model.pretrained_cfg["hf_hub_id"], model.patch_embed.img_size[0]
    import open_clip

    arch, tag = argument.split("/")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    with torch.device("meta"):
        model = open_clip.create_model(arch, device="meta", force_quick_gelu=cfg.get("quick_gelu", False))
    assert cfg["hf_hub"].endswith("/")  # "org/repo/": open_clip's default file names (hub.OPEN_CLIP_FILES)
    return OpenClipTokenViT(model.visual), cfg["hf_hub"].rstrip("/"), model.visual.image_size[0]


@pytest.mark.parametrize("name", NAMED)
def test_metadata_matches_the_full_architecture(name):
    entry = BACKBONES.entry(name)
    meta = entry.metadata
    vision, hub, resolution = _full_meta_vision(entry)
    assert (vision.patch_size, vision.embed_dim, vision.depth, vision.num_heads) == (
        meta["patch_size"], meta["width"], meta["depth"], meta["heads"])
    assert vision.num_builtin_registers == meta["registers"]
    assert vision.num_prefix_tokens == 1 + meta["registers"]
    assert resolution == meta["resolution"]
    assert hub == meta["hub"]
    assert meta["text"] is (meta["family"] == "open_clip")
    assert meta["summary"]


def _timm_reference(backbone: Backbone, images: torch.Tensor):
    model = backbone.vision.model
    depth = len(model.blocks)
    out = model.forward_intermediates(images, indices=list(range(depth)), norm=True, output_fmt="NCHW",
                                      return_prefix_tokens=True, intermediates_only=True)
    return [patches for patches, _ in out], [prefix for _, prefix in out]


def _open_clip_reference(backbone: Backbone, images: torch.Tensor):
    visual = backbone.vision.visual
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = False
    return pooled, tokens


@pytest.mark.parametrize("name", NAMED)
def test_contract_on_reduced_config(name):
    entry = BACKBONES.entry(name)
    meta = entry.metadata
    backbone = BACKBONES.get(name)(random_init=True, reduced=True)
    identity = backbone.identity
    assert isinstance(backbone, Backbone)
    assert backbone.name == name and identity.family == meta["family"]
    assert identity.weights_id == "random-init(seed=0)" and len(identity.weights_sha256) == 64
    assert backbone.patch_size == meta["patch_size"] and backbone.num_registers == meta["registers"]
    assert backbone.has_text is meta["text"] and backbone.has_text is meta["text"]
    assert backbone.native_resolution == (4 * backbone.patch_size, 4 * backbone.patch_size)
    assert len(backbone.mean) == 3 and len(backbone.std) == 3 and backbone.interpolation in ("bicubic", "bilinear")
    assert identity.extra["reduced"]["depth"] == 2 and "reduced" in identity.architecture
    assert backbone.describe()["native_resolution"] == list(backbone.native_resolution)

    patch = backbone.patch_size
    native = torch.randn(2, 3, *backbone.native_resolution)
    layers = backbone.forward_tokens(native, layers=(0, -1))
    assert [out.layer for out in layers] == [0, 1]
    for out in layers:
        assert out.patches.shape == (2, backbone.embed_dim, 4, 4) and out.grid == (4, 4)
        assert out.prefix.shape == (2, 1 + backbone.num_registers, backbone.embed_dim)

    # equality with the library's own forward at the native resolution
    if meta["family"] == "timm":
        ref_patches, ref_prefix = _timm_reference(backbone, native)
        for out, patches, prefix in zip(layers, ref_patches, ref_prefix, strict=True):
            torch.testing.assert_close(out.patches, patches, atol=TOL, rtol=0)
            torch.testing.assert_close(out.prefix, prefix, atol=TOL, rtol=0)
    else:
        pooled, tokens = _open_clip_reference(backbone, native)
        grid_tokens = layers[-1].patches.flatten(2).transpose(1, 2)
        torch.testing.assert_close(grid_tokens, tokens, atol=TOL, rtol=0)
        projected = backbone.forward_tokens(native, project=True)[0]
        assert projected.patches.shape == (2, backbone.output_dim, 4, 4)
        torch.testing.assert_close(projected.patches.flatten(2).transpose(1, 2), tokens @ backbone.vision.visual.proj,
                                   atol=TOL, rtol=0)
        torch.testing.assert_close(projected.prefix[:, 0], pooled, atol=TOL, rtol=0)  # CLS through ln_post + proj
        text = backbone.encode_text(["a photo of a dog.", "a photo of a very small red bicycle."])
        assert text.shape == (2, backbone.output_dim) and torch.isfinite(text).all()

    # any size, non-square: the grid follows the input
    wide = backbone.forward_tokens(torch.randn(1, 3, 3 * patch, 5 * patch))[0]
    assert wide.patches.shape == (1, backbone.embed_dim, 3, 5) and wide.grid == (3, 5)
    assert wide.prefix.shape[1] == 1 + backbone.num_registers and torch.isfinite(wide.patches).all()

    parts = backbone.vision.block_parts(-1)
    tokens = torch.randn(2, 17 + backbone.num_registers, backbone.embed_dim)
    q, k, v = parts.qkv(parts.norm1(tokens))
    assert q.shape == k.shape == v.shape == (2, parts.num_heads, tokens.shape[1], backbone.embed_dim // parts.num_heads)


def test_random_init_is_seeded():
    factory = BACKBONES.get("dinov2-vit-s14-reg4")
    first = factory(None, random_init=True, reduced=True)
    again = factory(None, random_init=True, reduced=True)
    other = factory(None, random_init=True, reduced=True, seed=1)
    assert first.identity.weights_sha256 == again.identity.weights_sha256 != other.identity.weights_sha256
    assert other.identity.weights_id == "random-init(seed=1)"


def test_pass_through_prefixes_build():
    from phreg_bench.backbones.build import build_backbone

    timm_backbone = build_backbone("timm:deit3_small_patch16_224.fb_in1k", random_init=True, reduced=True)
    assert timm_backbone.name == "timm:deit3_small_patch16_224.fb_in1k"
    assert timm_backbone.identity.family == "timm" and not timm_backbone.has_text
    clip = build_backbone("open_clip:ViT-B-32/laion2b_s34b_b79k", random_init=True, reduced=True)
    assert clip.name == "open_clip:ViT-B-32/laion2b_s34b_b79k" and clip.has_text
    assert clip.identity.extra["pretrained_tag"] == "laion2b_s34b_b79k" and clip.identity.extra["quick_gelu"] is False
    assert build_backbone("open_clip:ViT-B-16", random_init=True, reduced=True).identity.weights_id.startswith("random")


def test_quick_gelu_follows_the_pretrained_tag():
    from phreg_bench.backbones.build import build_backbone

    def activation(backbone):
        return type(backbone.vision.blocks[0].mlp.gelu).__name__

    assert activation(build_backbone("openai-clip-vit-b16", random_init=True, reduced=True)) == "QuickGELU"
    assert activation(build_backbone("dfn-clip-vit-b16", random_init=True, reduced=True)) == "QuickGELU"
    assert activation(build_backbone("openclip-vit-b16-laion2b", random_init=True, reduced=True)) == "GELU"
    untagged = build_backbone("open_clip:ViT-B-16", random_init=True, reduced=True, quick_gelu=True)
    assert activation(untagged) == "QuickGELU" and untagged.identity.extra["quick_gelu"] is True
    with pytest.raises(ValueError, match="contradicts the pretrained tag"):
        build_backbone("open_clip:ViT-B-16/openai", random_init=True, reduced=True, quick_gelu=False)


@pytest.mark.parametrize(("name", "message"), [
    ("open_clip:ViT-B-16-SigLIP/webli", "timm image tower"),
    ("open_clip:RN50/openai", "ResNet"),
    ("open_clip:ViT-B-16/no-such-tag", "known:"),
    ("open_clip:ViT-B-16", "pretrained tag"),
    ("timm:deit_base_distilled_patch16_224.fb_in1k", "distillation token"),
    ("timm:resnet50.a1_in1k", "not a plain VisionTransformer"),
])
def test_unsupported_models_are_refused_with_a_reason(name, message):
    factory = BACKBONES.get(name)
    with pytest.raises((TypeError, ValueError), match=message):
        factory(random_init="pretrained tag" not in message, reduced=True)


def test_full_size_openai_clip_b16_matches_open_clip():
    """The real ViT-B/16 architecture (random weights) at 224 px: dense tokens equal open_clip's."""
    backbone = BACKBONES.get("openai-clip-vit-b16")(None, random_init=True)
    geometry = (backbone.patch_size, backbone.embed_dim, backbone.output_dim, backbone.depth, backbone.num_heads)
    assert geometry == (16, 768, 512, 12, 12)
    assert backbone.native_resolution == (224, 224) and backbone.identity.extra["quick_gelu"] is True
    assert backbone.mean == (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing
    images = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        pooled, tokens = _open_clip_reference(backbone, images)
        projected = tokens @ backbone.vision.visual.proj
        out = backbone.forward_tokens(images, project=True)[0]
    assert out.patches.shape == (1, 512, 14, 14)
    torch.testing.assert_close(out.patches.flatten(2).transpose(1, 2), projected, atol=TOL, rtol=0)
    torch.testing.assert_close(out.prefix[:, 0], pooled, atol=TOL, rtol=0)


def test_full_size_dinov2_reg4_matches_timm():
    """The real DINOv2-S/14-reg4 architecture (random weights): prefix = CLS + 4 registers, never patches."""
    backbone = BACKBONES.get("dinov2-vit-s14-reg4")(None, random_init=True)
    assert backbone.native_resolution == (518, 518) and backbone.num_registers == 4
    model = backbone.vision.model
    with torch.inference_mode():
        images = torch.randn(1, 3, 518, 518)
        features = model.forward_features(images)
        mine = backbone.forward_tokens(images)[0]
    assert mine.patches.shape == (1, 384, 37, 37) and mine.prefix.shape == (1, 5, 384)
    torch.testing.assert_close(mine.prefix, features[:, :5], atol=TOL, rtol=0)
    torch.testing.assert_close(mine.patches.flatten(2).transpose(1, 2), features[:, 5:], atol=TOL, rtol=0)
