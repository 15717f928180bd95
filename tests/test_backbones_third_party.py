"""Third-party backbones: a custom ViT (neither timm nor open_clip) that only implements the contract runs
through ``phreg-bench run``; the documented example package registers through an entry point and through
``package.module:factory``."""

from __future__ import annotations

import json
import sys
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_bench.registry import Registry
from phreg_core.errors import ConfigError
from phreg_core.pos_embed import get_policy
from phreg_core.vit import BlockParts, TokenLayout, TokenViT

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "third_party_backbone"


# -- a custom model written here: patch 8, width 32, 2 blocks, CLS + 2 built-in registers ------------------
class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def qkv(self, x: Tensor):
        b, n, c = x.shape
        return self.to_qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(self.ln1(x))
        x = x + self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape))
        return x + self.ffn(self.ln2(x))


class _RegViT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, grid: int = 8):
        super().__init__()
        self.grid = grid
        self.stem = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.regs = nn.Parameter(torch.randn(1, 2, dim))
        self.pos = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.1)
        self.layers = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)


class _RegTokenViT(TokenViT):
    pos_resample = get_policy("bicubic-antialias")  # every adapter names its resampling policy
    mean = std = (0.5, 0.5, 0.5)  # the normalisation the weights expect

    def __init__(self, model: _RegViT):
        super().__init__()
        self.model, self.blocks = model, model.layers
        self.patch_size, self.embed_dim, self.num_heads = 8, model.cls.shape[-1], model.layers[0].heads
        self.native_grid, self.num_prefix_tokens, self.num_builtin_registers = (model.grid, model.grid), 3, 2
        self.output_dim = self.embed_dim

    def embed(self, images: Tensor):
        grid = self.grid_for(*images.shape[-2:])
        x = self.model.stem(images).flatten(2).transpose(1, 2)
        x = x + self.resample_pos(self.model.pos, grid)
        batch = x.shape[0]
        prefix = [self.model.cls.expand(batch, -1, -1), self.model.regs.expand(batch, -1, -1)]
        return torch.cat([*prefix, x], 1), TokenLayout(num_prefix=3, grid=grid)

    def norm_pre(self, tokens: Tensor) -> Tensor:
        return tokens

    def block_parts(self, index: int) -> BlockParts:
        block = self.blocks[index]
        return BlockParts(norm1=block.ln1, qkv=block.qkv, out_proj=block.out, norm2=block.ln2, mlp=block.ffn,
                          num_heads=block.heads)

    def final_norm(self, tokens: Tensor) -> Tensor:
        return self.model.ln(tokens)


def build_custom(argument: str | None = None, *, name: str = "reg-vit", weights: str | None = None,
                 random_init: bool = False, seed: int = 0, **options) -> Backbone:
    """The factory named on the command line as ``test_backbones_third_party:build_custom``."""
    assert weights is None, "this test model has no weights"
    torch.manual_seed(seed)
    identity = BackboneIdentity(name=name, family="custom", architecture="RegViT", weights_id=f"random-init({seed})",
                                weights_sha256=None)
    return Backbone(_RegTokenViT(_RegViT(**options).eval()), identity)


def build_unnamed(argument: str | None = None, *, weights: str | None = None, random_init: bool = False,
                  **options) -> Backbone:
    """A factory without a ``name`` parameter: it names its backbone itself."""
    return build_custom(argument, weights=weights, random_init=random_init, **options)


# -- tests -------------------------------------------------------------------------------------------------
def test_custom_model_meets_the_contract():
    backbone = build_custom()
    out = backbone.forward_tokens(torch.randn(2, 3, 48, 72), layers=(0, -1))
    assert [o.patches.shape for o in out] == [(2, 32, 6, 9)] * 2
    assert [o.prefix.shape for o in out] == [(2, 3, 32)] * 2
    # the last block can be swapped (what MaskCLIP / NACLIP do) through block_parts
    from phreg_core.last_block import PRESETS

    swapped = backbone.forward_tokens(torch.randn(1, 3, 64, 64), last_block=PRESETS["maskclip"])[0]
    assert swapped.patches.shape == (1, 32, 8, 8)


def test_custom_model_runs_through_phreg_bench_run(tmp_path):
    from phreg_bench.cli import main

    name = f"{__name__}:build_custom"
    code = main(["run", "--backbone", name, "--tasks", "synthetic/segmentation", "--device", "cpu",
                 "--results-dir", str(tmp_path), "--backbone-option", "depth=3"])
    assert code == 0
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1
    record = json.loads(files[0].read_text())
    assert record["backbone"]["name"] == name and record["backbone"]["family"] == "custom"
    assert record["backbone"]["depth"] == 3 and record["task"]["name"] == "synthetic/segmentation"
    assert record["status"]["complete"] is True
    value = record["metrics"]["values"][record["metrics"]["main"]]
    assert 0.0 <= value <= 100.0  # a measured mIoU; its level depends on the random model


def test_the_requested_name_reaches_the_identity_once():
    from phreg_bench.backbones.build import build_backbone

    named = build_backbone(f"{__name__}:build_custom", depth=1)
    assert named.name == named.identity.name == f"{__name__}:build_custom"
    assert named.describe()["name"] == f"{__name__}:build_custom" and named.describe()["num_registers"] == 2
    assert build_backbone(f"{__name__}:build_unnamed", depth=1).name == "reg-vit"  # a factory without `name`
    with pytest.raises(ConfigError, match="'name' is not a backbone option"):
        build_backbone(f"{__name__}:build_custom", name="other")
    with pytest.raises(FrozenInstanceError):
        named.identity.name = "renamed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        named.identity.extra["added"] = 1  # type: ignore[index]


def test_example_package_declares_its_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    points = project["project"]["entry-points"]["phreg_bench.backbones"]
    assert points == {"example-vit": "phreg_example_backbone.factory:build"}


def test_example_package_as_module_factory(monkeypatch, tmp_path):
    from phreg_bench.cli import main

    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    code = main(["run", "--backbone", "phreg_example_backbone.factory:build", "--tasks", "synthetic/segmentation",
                 "--device", "cpu", "--results-dir", str(tmp_path), "--backbone-option", "depth=2"])
    files = list(tmp_path.rglob("*.json"))
    assert code == 0 and len(files) == 1
    assert json.loads(files[0].read_text())["backbone"]["name"] == "phreg_example_backbone.factory:build"


@pytest.mark.parametrize("args, message", [
    (["--backbone-option", "foo=1"], "example-vit has no option 'foo'"),
    (["--backbone-option", "depth=abc"], "example-vit option depth='abc' must be a positive integer"),
    (["--weights", "/no/such/weights.safetensors"], "weights file /no/such/weights.safetensors does not exist"),
])
def test_example_package_refuses_bad_input_in_one_line(args, message, monkeypatch, tmp_path, capsys):
    from phreg_bench.cli import main

    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    code = main(["run", "--backbone", "phreg_example_backbone.factory:build", "--tasks", "synthetic/segmentation",
                 "--device", "cpu", "--results-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not list(tmp_path.rglob("*.json"))


def test_example_package_through_its_entry_point(monkeypatch, tmp_path):
    """An installed distribution is simulated by a ``.dist-info`` folder on ``sys.path``."""
    dist = tmp_path / "phreg_example_backbone-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: phreg-example-backbone\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[phreg_bench.backbones]\nexample-vit = phreg_example_backbone.factory:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    registry = Registry("backbone", "phreg_bench.backbones")
    assert "example-vit" in registry
    assert registry.entry("example-vit").source == "plugin:phreg-example-backbone"
    backbone = registry.get("example-vit")(None, random_init=True, depth=2)
    out = backbone.forward_tokens(torch.randn(1, 3, 40, 64))[0]
    assert out.patches.shape == (1, 64, 5, 8) and out.prefix.shape == (1, 1, 64)
    assert backbone.identity.family == "custom" and "phreg_example_backbone" in sys.modules
    assert backbone.name == "example-vit"
