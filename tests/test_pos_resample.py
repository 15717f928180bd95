"""Positional-embedding resampling policies equal the reference codebases' own calls, at the protocols' sizes.

Each reference call is transcribed literally below (same op sequence, same arguments) with the repo, file
and function it comes from. Models are tiny (width 32, one block) but have the real geometry: a CLIP-like
open_clip tower with a 14×14 grid at patch 16 (224 px native) and DINOv2-like timm towers with a 37×37 grid
at patch 14 (518 px native), run at 224, 448, 336×448, 490×644 and 518 px (the sizes that are multiples of
the patch size).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from reference_pos_embed import (
    clip_reg_upsampling_pos_embedding,
    dinov2_interpolate_pos_encoding,
    hf_dinov2_4372_interpolate_pos_encoding,
    maskclip_resize_pos_embed,
    naclip_positional_term,
    student_clip_interpolate_pos_encoding,
)
from torch import nn

from phreg_bench.registries import BACKBONES
from phreg_core.pos_embed import POLICIES, POLICY_NAMES, PosResampleError, get_policy

TOL = 1e-6
CLIP_SIZES = [(224, 224), (448, 448), (336, 448)]  # patch 16: the other protocol sizes are no multiples of 16
DINO_SIZES = [(224, 224), (448, 448), (336, 448), (490, 644), (518, 518)]
REDUCED_CLIP = {"depth": 1, "width": 32, "heads": 2, "grid": 14, "embed_dim": 16}  # 14x14 at patch 16 = CLIP-B/16
REDUCED_DINO = {"depth": 1, "width": 32, "heads": 2, "grid": 37}  # 37x37 at patch 14 = DINOv2 at 518 px


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- helpers ------------------------------------------------------------------------------------------------
def _tokens(count: int, dim: int) -> torch.Tensor:
    return torch.zeros(1, count, dim)


def _table(grid: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(1 + grid * grid, dim, generator=torch.Generator().manual_seed(seed))


def _ours(policy: str, table: torch.Tensor, src: int, dst: tuple[int, int]) -> torch.Tensor:
    """``[1 + h*w, C]`` -> ``[1 + H*W, C]`` through the named policy (CLS row kept)."""
    patches = get_policy(policy)(table[1:].unsqueeze(0), (src, src), dst)[0]
    return torch.cat([table[:1], patches], dim=0)


def _grid(size: tuple[int, int], patch: int) -> tuple[int, int]:
    return size[0] // patch, size[1] // patch


def _images(size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def _clip(pos_resample: str | None = None):
    return BACKBONES.get("openai-clip-vit-b16")(None, random_init=True, reduced=REDUCED_CLIP,
                                                pos_resample=pos_resample)


def _dino(name: str, pos_resample: str | None = None):
    return BACKBONES.get(name)(None, random_init=True, reduced=REDUCED_DINO, pos_resample=pos_resample)


# -- tables ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", CLIP_SIZES)
def test_offset_policy_is_the_ovss_and_ph_reg_clip_call(size):
    table, grid = _table(14), _grid(size, 16)
    want = naclip_positional_term(table, 16, _images(size), _tokens(1 + grid[0] * grid[1], 32))
    torch.testing.assert_close(_ours("bicubic-offset", table, 14, grid), want, atol=TOL, rtol=0)


@pytest.mark.parametrize("size", DINO_SIZES)
def test_offset_policy_is_dinov2_hub_and_hf_dinov2_4372(size):
    table, grid = _table(37), _grid(size, 14)
    tokens = _tokens(1 + grid[0] * grid[1], 32)
    ours = _ours("bicubic-offset", table, 37, grid)
    hub = dinov2_interpolate_pos_encoding(table[None], 14, 0.1, False, tokens, *size)[0]
    hf = hf_dinov2_4372_interpolate_pos_encoding(table[None], 14, tokens, *size)[0]
    torch.testing.assert_close(ours, hub, atol=TOL, rtol=0)
    torch.testing.assert_close(ours, hf, atol=TOL, rtol=0)


@pytest.mark.parametrize("size", DINO_SIZES)
def test_antialias_policy_is_timm_open_clip_and_dinov2_reg_hub(size):
    from open_clip.model import resize_pos_embed
    from timm.layers import resample_abs_pos_embed

    table, grid = _table(37), _grid(size, 14)
    ours = _ours("bicubic-antialias", table, 37, grid)
    # timm/layers/pos_embed.py resample_abs_pos_embed, as VisionTransformer._pos_embed calls it (dynamic size)
    timm = resample_abs_pos_embed(table[None], new_size=grid, old_size=(37, 37), num_prefix_tokens=1)[0]
    hub = dinov2_interpolate_pos_encoding(table[None], 14, 0.0, True, _tokens(1 + grid[0] * grid[1], 32), *size)[0]
    torch.testing.assert_close(ours, timm, atol=TOL, rtol=0)
    torch.testing.assert_close(ours, hub, atol=TOL, rtol=0)
    # open_clip/model.py resize_pos_embed (square grids only: it reads `model.visual.grid_size`)
    if grid[0] == grid[1]:
        class _Visual:
            grid_size = grid

        class _Model:
            visual = _Visual()

        state = {"visual.positional_embedding": table.clone()}
        resize_pos_embed(state, _Model())
        torch.testing.assert_close(ours, state["visual.positional_embedding"], atol=TOL, rtol=0)


@pytest.mark.parametrize("size", CLIP_SIZES)
def test_size_policy_is_maskclip_and_the_first_ph_reg_student(size):
    table, grid = _table(14), _grid(size, 16)
    ours = _ours("bicubic", table, 14, grid)
    torch.testing.assert_close(ours, maskclip_resize_pos_embed(table[None], grid, (14, 14), "bicubic")[0],
                               atol=TOL, rtol=0)
    torch.testing.assert_close(ours, clip_reg_upsampling_pos_embedding(table, size, 16), atol=TOL, rtol=0)


def test_the_old_size_call_is_not_the_reference_call_at_448():
    """The fault of issue 10: phreg-bench resampled every model with `size=` (policy "bicubic"); at 448 px
    that differs from what NACLIP/SCLIP/ClearCLIP/PH-Reg compute, and from timm's own forward."""
    table = _table(14)
    ovss = naclip_positional_term(table, 16, _images((448, 448)), _tokens(1 + 28 * 28, 32))
    old = _ours("bicubic", table, 14, (28, 28))
    assert (old - ovss).abs().max() > 0.05
    assert (_ours("bicubic-antialias", table, 14, (28, 28)) - old).abs().max() > 0.05
    for name in POLICY_NAMES:  # the native grid is never resampled
        assert torch.equal(_ours(name, table, 14, (14, 14)), table)


# -- final patch tokens ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", CLIP_SIZES)
def test_clip_tokens_equal_the_ovss_forward(size):
    """openai-clip-vit-b16 (default policy) equals open_clip's tower fed NACLIP's resampled table."""
    backbone = _clip()
    assert backbone.pos_resample == "bicubic-offset"
    visual = copy.deepcopy(backbone.vision.visual)
    images, grid = _images(size), _grid(size, 16)
    with torch.no_grad():
        table = naclip_positional_term(visual.positional_embedding, 16, images, _tokens(1 + grid[0] * grid[1], 32))
        visual.positional_embedding = nn.Parameter(table.clone())
        visual.output_tokens = True
        _, tokens = visual(images)
        out = backbone.forward_tokens(images, project=True)[0]
    assert out.grid == grid
    torch.testing.assert_close(out.patches.flatten(2).transpose(1, 2), tokens @ visual.proj, atol=TOL, rtol=0)
    if size != (224, 224):
        old = _clip("bicubic").forward_tokens(images, project=True)[0].patches.flatten(2).transpose(1, 2)
        assert (old - tokens @ visual.proj).abs().max() > 1e-3  # the old call gives other features


@pytest.mark.parametrize("size", DINO_SIZES)
def test_dinov2_tokens_equal_the_hf_dinov2_4372_forward(size):
    """dinov2-vit-s14 (default policy) equals the same timm weights fed HF Dinov2's resampled table."""
    from phreg_bench.backbones import timm_backbones

    backbone = _dino("dinov2-vit-s14")
    assert backbone.pos_resample == "bicubic-offset"
    model, grid, images = backbone.vision.model, _grid(size, 14), _images(size)
    reference = timm_backbones.create_model("vit_small_patch14_dinov2.lvd142m",
                                            reduced=timm_backbones.reduced_config(REDUCED_DINO), img_size=size)
    state = model.state_dict()
    state["pos_embed"] = hf_dinov2_4372_interpolate_pos_encoding(
        state["pos_embed"], 14, _tokens(1 + grid[0] * grid[1], 32), *size)
    reference.load_state_dict(state)
    with torch.no_grad():
        want = reference.forward_features(images)
        out = backbone.forward_tokens(images)[0]
    torch.testing.assert_close(out.patches.flatten(2).transpose(1, 2), want[:, 1:], atol=TOL, rtol=0)
    torch.testing.assert_close(out.prefix, want[:, :1], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["dinov2-vit-s14-reg4", "dinov2-vit-s14"])
@pytest.mark.parametrize("size", DINO_SIZES)
def test_antialias_tokens_equal_timms_own_dynamic_forward(name, size):
    """With timm's policy (the default of DINOv2-reg and every other timm ViT) the backbone is timm's own
    `forward_features` with `dynamic_img_size=True` on the same module."""
    backbone = _dino(name, pos_resample=None if name.endswith("reg4") else "bicubic-antialias")
    assert backbone.pos_resample == "bicubic-antialias"
    model = backbone.vision.model
    assert model.dynamic_img_size
    images = _images(size)
    with torch.no_grad():
        want = model.forward_features(images)
        out = backbone.forward_tokens(images)[0]
    prefix = model.num_prefix_tokens
    torch.testing.assert_close(out.patches.flatten(2).transpose(1, 2), want[:, prefix:], atol=TOL, rtol=0)
    torch.testing.assert_close(out.prefix, want[:, :prefix], atol=TOL, rtol=0)


# -- the student resamples like its base ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [(336, 336), (336, 448), (224, 224), (448, 448)])
def test_clip_student_table_equals_ph_regs_student_clip(size):
    """Like StudentCLIP: 14x14 -> 28x28 once at construction, then 28x28 -> the eval grid, both offset-0.1."""
    from phreg_core.student import Student

    base = _clip().vision
    student = Student(base, 2, train_grid=(28, 28))
    assert student.spec()["pos_resample"] == "bicubic-offset"
    stored = student.vision.visual.positional_embedding.detach()
    official = student_clip_interpolate_pos_encoding(base.visual.positional_embedding.detach(), 448, 448,
                                                     (448, 448), 16)
    torch.testing.assert_close(stored, official[0], atol=TOL, rtol=0)
    grid = _grid(size, 16)
    ours = student.vision.resample_pos(stored[1:].unsqueeze(0), grid)[0]
    want = stored[1:] if size == (448, 448) else \
        student_clip_interpolate_pos_encoding(stored, *size, (448, 448), 16)[0, 1:]
    torch.testing.assert_close(ours, want, atol=TOL, rtol=0)


def test_adapter_records_and_keeps_its_policy(tmp_path):
    from phreg_core.adapter_io import ADAPTER_VERSION, load_adapter, save_adapter
    from phreg_core.student import Student

    backbone = BACKBONES.get("tiny-vit")(None, seed=0)
    student = Student(backbone.vision, 2, seed=0)
    sha = backbone.identity.weights_sha256
    _, sidecar_path = save_adapter(student, tmp_path / "adapter.safetensors", base_name="tiny-vit",
                                   base_weights_sha256=sha)
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["version"] == ADAPTER_VERSION == 2 and sidecar["student"]["pos_resample"] == "bicubic"
    loaded, _ = load_adapter(backbone.vision, tmp_path, weights_sha256=sha)
    assert loaded.vision.pos_resample.name == "bicubic"
    # on a base built with another policy the student still resamples its own table with the adapter's policy,
    # and the base keeps its own (the student never changes the base tower)
    other = BACKBONES.get("tiny-vit")(None, seed=0, pos_resample="bicubic-offset")
    on_other, _ = load_adapter(other.vision, tmp_path, weights_sha256=sha)
    assert on_other.vision.pos_resample.name == "bicubic"
    assert other.vision.pos_resample.name == "bicubic-offset"
    images = torch.randn(1, 3, 48, 72)
    torch.testing.assert_close(on_other.forward_tokens(images)[0].patches, loaded.forward_tokens(images)[0].patches,
                               atol=0, rtol=0)
    # a version-1 sidecar predates policies: it was made with "bicubic"
    del sidecar["student"]["pos_resample"]
    sidecar["version"] = 1
    sidecar_path.write_text(json.dumps(sidecar))
    assert load_adapter(other.vision, tmp_path, weights_sha256=sha)[0].vision.pos_resample.name == "bicubic"


# -- identity, defaults, options ------------------------------------------------------------------------------
def test_policy_enters_the_backbone_identity_and_the_config_hash():
    from phreg_bench.results.records import BackboneRef, MethodRef, Protocol, RunIdentity, TaskRef

    def record(policy):
        backbone = BACKBONES.get("tiny-vit")(None, seed=0, pos_resample=policy)
        info = backbone.describe()
        return info, RunIdentity(TaskRef("t", "f", "1", "x"), BackboneRef(info), MethodRef("raw", {}),
                                 Protocol("p", {"a": 1}), seed=0, limit=None, precision="fp32")

    info, default = record(None)
    assert info["pos_resample"] == "bicubic"
    same, offset = record("bicubic")[1], record("bicubic-offset")[1]
    assert same.config_hash == default.config_hash
    assert offset.config_hash != default.config_hash
    weights = [identity.backbone.description["weights_sha256"] for identity in (offset, default)]
    assert weights[0] == weights[1]  # same weights


def test_catalogue_defaults_follow_the_references():
    want = {"openai-clip-vit-b16": "bicubic-offset", "openclip-vit-b16-laion2b": "bicubic-offset",
            "dfn-clip-vit-b16": "bicubic-offset", "metaclip-vit-b16": "bicubic-offset",
            "dinov2-vit-b14": "bicubic-offset", "dinov2-vit-g14": "bicubic-offset",
            "dinov2-vit-b14-reg4": "bicubic-antialias", "deit-vit-b16": "bicubic-antialias",
            "deit3-vit-b16": "bicubic-antialias", "augreg-vit-b16": "bicubic-antialias",
            "mae-vit-b16": "bicubic-antialias", "tiny-vit": "bicubic", "planted-vit": "bicubic"}
    for name, policy in want.items():
        assert BACKBONES.entry(name).metadata["pos_resample"] == policy, name
    named = [e for e in BACKBONES if not e.name.endswith(":")]
    assert all(e.metadata.get("pos_resample") in POLICIES for e in named if "patch_size" in e.metadata)
    # pass-through prefixes: the library's own convention
    timm = BACKBONES.get("timm:")("vit_small_patch16_224", random_init=True, reduced=True)
    clip = BACKBONES.get("open_clip:")("ViT-B-16", random_init=True, reduced=True)
    assert timm.pos_resample == clip.pos_resample == "bicubic-antialias"
    assert BACKBONES.get("planted-vit")(None).pos_resample == "bicubic"


def test_unknown_policy_is_one_clear_error_before_work():
    with pytest.raises(PosResampleError, match="pos_resample / --pos-resample.*bicubic, bicubic-antialias"):
        get_policy("bilinear")
    # a catalogue entry refuses it before looking for weights (no network here)
    with pytest.raises(PosResampleError, match="bicubic-offset"):
        BACKBONES.get("openai-clip-vit-b16")(None, pos_resample="nope")
    with pytest.raises(PosResampleError):
        BACKBONES.get("tiny-vit")(None, pos_resample="nope")


def test_cli_option_is_validated_and_reaches_the_backbone(capsys):
    from phreg_bench.cli import CliError, build_parser
    from phreg_bench.cli._options import with_pos_resample

    parser = build_parser()
    for command in (["run", "--backbone", "tiny-vit", "--tasks", "x"], ["distill", "-b", "tiny-vit", "--out", "o"],
                    ["viz"]):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args([*command, "--pos-resample", "nope"])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert "--pos-resample" in err and "bicubic-offset" in err
        assert parser.parse_args([*command, "--pos-resample", "bicubic-offset"]).pos_resample == "bicubic-offset"
    assert with_pos_resample({"depth": 2}, "bicubic") == {"depth": 2, "pos_resample": "bicubic"}
    with pytest.raises(CliError, match="--pos-resample bicubic contradicts"):
        with_pos_resample({"pos_resample": "bicubic-offset"}, "bicubic")


def test_backbone_refuses_an_adapter_without_a_policy():
    from phreg_bench.backbones.base import Backbone

    backbone = BACKBONES.get("tiny-vit")(None)
    vision = backbone.vision
    vision.pos_resample = None
    with pytest.raises(TypeError, match="declares no positional-embedding resampling policy"):
        Backbone(vision, backbone.identity)
    with pytest.raises(TypeError, match="declares no positional-embedding resampling policy"):
        vision.resample_pos(vision.model.pos_embed[:, 1:], (4, 4))


@pytest.mark.parametrize("name", ["openai-clip-vit-b16", "dinov2-vit-s14", "dinov2-vit-s14-reg4"])
def test_img_size_build_resamples_loaded_weights_with_the_policy(tmp_path, name):
    """`img_size=` makes another native size: the loaded table is resampled once with the backbone's policy,
    so the model built at 448 px equals the native model run at 448 px (not the library's load-time call)."""
    from safetensors.torch import save_file

    clip = name.startswith("openai")
    reduced = REDUCED_CLIP if clip else REDUCED_DINO
    if clip:  # the whole CLIP (image and text towers), as a checkpoint holds it
        import open_clip

        from phreg_bench.backbones import open_clip_backbones as ocb

        overrides = ocb._reduce(open_clip.get_model_config("ViT-B-16"), ocb.reduced_config(reduced))
        model = ocb._create("ViT-B-16", seed=3, quick_gelu=True, preprocess={}, overrides=overrides, img_size=None)
    else:
        model = BACKBONES.get(name)(None, random_init=True, reduced=reduced, seed=3).vision.model
    with torch.no_grad():  # a table far from the random init, so that resampling differences show
        table = model.visual.positional_embedding if clip else model.pos_embed
        table.copy_(torch.randn(table.shape, generator=torch.Generator().manual_seed(4)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = BACKBONES.get(name)(None, weights=str(tmp_path / "w.safetensors"), reduced=reduced)
    resized = BACKBONES.get(name)(None, weights=str(tmp_path / "w.safetensors"), reduced=reduced, img_size=448)
    assert resized.native_resolution == (448, 448) and resized.pos_resample == loaded.pos_resample
    images = _images((448, 448))
    with torch.no_grad():
        want = loaded.forward_tokens(images)[0].patches
        got = resized.forward_tokens(images)[0].patches
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
