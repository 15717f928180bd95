"""`phreg-bench adapter import`: the authors' released PH-Reg students, written in their exact key layout from
tiny random CLIP / DINOv2 models, convert into adapters whose student equals a literal transcription of
their forward on the same tensors; other layouts and other base weights are refused."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fixtures_seg import make_voc
from reference_pos_embed import clip_reg_upsampling_pos_embedding
from torch import nn

from phreg_bench.checkpoints.official import BaseMismatchError, ImportLayoutError, import_official
from phreg_bench.cli import main
from phreg_bench.methods.phreg import build as build_phreg
from phreg_bench.registries import BACKBONES
from phreg_bench.results.store import read_result

TOL = 1e-6
# Compared in float64 so that the 1e-6 bound tests the math, not float32 rounding: in float32 the two forwards
# differ by up to ~3e-6 on outputs of size ~2 at 448 px (801 tokens summed in another order by the seq-first
# nn.MultiheadAttention than by open_clip's batch-first attention). OpenAI's LayerNorm subclass always computes
# in float32 (it casts its input), so its parameters stay float32 while everything else runs in float64.
CLIP_BASE = ["openai-clip-vit-b16", "--backbone-option", "reduced=true", "--random-init"]
DINO_BASE = ["dinov2-vit-b14", "--backbone-option", "reduced=true", "--random-init"]


def base_backbone(name: str, seed: int = 0):
    return BACKBONES.get(name)(random_init=True, reduced=True, seed=seed)


# -- OpenAI CLIP's image tower (openai/CLIP clip/model.py), transcribed: the authors' models/OpenaiMaskCLIP/model.py
#    is not in their repository, and their clip_reg.py imports LayerNorm / QuickGELU / the tower from it.
class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor):
        orig_type = x.dtype
        ret = super().forward(x.type(torch.float32))
        return ret.type(orig_type)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, d_model: int, n_head: int, attn_mask: torch.Tensor = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, d_model * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask

    def attention(self, x: torch.Tensor):
        self.attn_mask = self.attn_mask.to(dtype=x.dtype, device=x.device) if self.attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=self.attn_mask)[0]

    def forward(self, x: torch.Tensor):
        x = x + self.attention(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, attn_mask: torch.Tensor = None):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(in_channels=3, out_channels=width, kernel_size=patch_size, stride=patch_size,
                               bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))


# -- 0raiser0/PH-Reg models/OpenaiMaskCLIP/clip_reg.py ModifiedResBlock / ModifiedImageEncoder, transcribed ---------
class ModifiedResBlock(torch.nn.Module):
    def __init__(self, d_model: int, n_head: int, attn_mask: torch.Tensor = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, d_model * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask

    def forward(self, x: torch.Tensor):
        v_in_proj_weight = self.attn.in_proj_weight[-self.attn.embed_dim:]
        v_in_proj_bias = self.attn.in_proj_bias[-self.attn.embed_dim:]
        v_in = F.linear(self.ln_1(x), v_in_proj_weight, v_in_proj_bias)
        v_out = F.linear(v_in, self.attn.out_proj.weight, self.attn.out_proj.bias)
        return v_out


class ModifiedImageEncoder(nn.Module):
    def __init__(self, original_image_encoder, num_register_tokens=2, patch_size=16, input_resolutions=(448, 448),
                 upsampled_pos_grad=False):
        super().__init__()
        self.requires_grad = upsampled_pos_grad
        self.original_image_encoder = original_image_encoder
        last_resblock = self.original_image_encoder.transformer.resblocks[-1]
        last_resblock_state_dict = last_resblock.state_dict()
        d_model = self.original_image_encoder.transformer.width
        n_head = last_resblock.attn.num_heads
        new_resblock = ModifiedResBlock(d_model=d_model, n_head=n_head, attn_mask=None)
        new_resblock.load_state_dict(last_resblock_state_dict, strict=True)
        self.original_image_encoder.transformer.resblocks[-1] = new_resblock
        embed_dim = self.original_image_encoder.class_embedding.shape[0]
        self.register_tokens = nn.Parameter(
            torch.randn(num_register_tokens, embed_dim) / torch.sqrt(torch.tensor(embed_dim)),
            requires_grad=self.requires_grad)
        self.input_resolutions = input_resolutions
        self.patch_size = patch_size
        if self.input_resolutions != (224, 224):
            self.original_image_encoder.positional_embedding = self.upsampling_pos_embedding(
                image_shape=self.input_resolutions)

    def forward(self, x):
        img_h, img_w = x.shape[-2], x.shape[-1]
        x = self.original_image_encoder.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        batch_size = x.shape[0]
        cls_token = self.original_image_encoder.class_embedding.to(x.dtype) + torch.zeros(
            x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls_token, x], dim=1)
        if (img_h, img_w) != self.input_resolutions:
            pos_embed = self.upsampling_pos_embedding(image_shape=(img_h, img_w)).to(x.device, x.dtype)
        else:
            pos_embed = self.original_image_encoder.positional_embedding
        x = x + pos_embed
        register_tokens = self.register_tokens.unsqueeze(0).expand(batch_size, -1, -1).to(x.dtype)
        x = torch.cat([x, register_tokens], dim=1)
        x = self.original_image_encoder.ln_pre(x)
        x = x.permute(1, 0, 2)
        x = self.original_image_encoder.transformer(x)
        x = x.permute(1, 0, 2)
        x = self.original_image_encoder.ln_post(x)
        if self.original_image_encoder.proj is not None:
            x = x @ self.original_image_encoder.proj
        return x

    def upsampling_pos_embedding(self, image_shape):
        new_patch_pos_embed = clip_reg_upsampling_pos_embedding(self.original_image_encoder.positional_embedding,
                                                                image_shape, self.patch_size)
        return nn.Parameter(new_patch_pos_embed.clone(), requires_grad=self.requires_grad)


def perturb_(module: nn.Module, seed: int) -> None:
    """What their training changes: new random values (so a tensor loaded into the wrong place shows)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters() if not isinstance(module, nn.Parameter) else [module]:
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


def authors_clip_student(seed: int = 0) -> ModifiedImageEncoder:
    """zero_shot/segmentor.py: ModifiedImageEncoder(net.visual, 16, 16, (448, 448)) on a tiny CLIP-shaped tower."""
    base = base_backbone("openai-clip-vit-b16").vision.visual  # 2 blocks of width 48, patch 16, joint dim 32
    visual = VisionTransformer(input_resolution=64, patch_size=16, width=48, layers=2, heads=2, output_dim=32)
    visual.load_state_dict(base.state_dict(), strict=True)  # open_clip kept OpenAI's parameter names
    torch.manual_seed(seed)
    student = ModifiedImageEncoder(visual, num_register_tokens=16, patch_size=16, input_resolutions=(448, 448),
                                   upsampled_pos_grad=False).to(torch.float32)
    tower = student.original_image_encoder
    for index, trained in enumerate((student.register_tokens, tower.positional_embedding, tower.conv1.weight,
                                     tower.transformer.resblocks[-2], tower.transformer.resblocks[-1])):
        perturb_(trained, seed + index)
    return student.eval()


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> tuple[Path, ModifiedImageEncoder]:
    student = authors_clip_student()
    path = tmp_path_factory.mktemp("official") / "distilled_clip.pth"
    torch.save(student.state_dict(), path)  # a plain state dict, as segmentor.py's torch.load expects
    return path, student


@pytest.fixture(scope="module")
def clip_pair(clip_file, tmp_path_factory):
    """(their encoder, the project's student from the imported adapter), both in float64 (see TOL)."""
    path, theirs = clip_file
    out = tmp_path_factory.mktemp("imported")
    assert main(["adapter", "import", "--format", "official-clip", str(path), "--backbone", *CLIP_BASE,
                 "--out", str(out), "--overwrite"]) == 0
    model = build_phreg(base_backbone("openai-clip-vit-b16"), adapter=str(out)).double()
    theirs = copy.deepcopy(theirs).double()
    for module in theirs.modules():
        if isinstance(module, LayerNorm):
            module.float()
    return theirs, model


# 448: the stored table as it is; the others re-interpolate it bicubically from 28x28 (their upsampling_pos_embedding)
@pytest.mark.parametrize("height,width", [(448, 448), (224, 224), (336, 448), (64, 96)])
def test_clip_student_equals_the_authors_forward(clip_pair, height, width):
    theirs, model = clip_pair
    images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height + width)).double()
    with torch.no_grad():
        want = theirs(images)
        got = model.forward_tokens(images, project=True)[0]
    grid = (height // 16, width // 16)
    patches = want[:, 1:-16].transpose(1, 2).reshape(2, -1, *grid)  # segmentor.py: image_features[:, 1:-16]
    assert (got.patches - patches).abs().max() <= TOL
    assert (got.prefix[:, 0] - want[:, 0]).abs().max() <= TOL  # CLS
    assert (got.prefix[:, 1:] - want[:, -16:]).abs().max() <= TOL  # the 16 registers


def test_clip_adapter_records_base_and_source(clip_file, tmp_path):
    path, _ = clip_file
    base = base_backbone("openai-clip-vit-b16")
    result = import_official("official-clip", path, base, tmp_path)
    sidecar = result.sidecar_path.read_text()
    assert base.identity.weights_sha256 in sidecar and '"official-clip"' in sidecar
    assert result.info["frozen_tensors_checked"] > 0 and result.info["resolution"] == 448
    spec = result.student.spec()
    assert spec["num_registers"] == 16 and spec["train_grid"] == [28, 28] and spec["placement"] == "append"
    assert spec["last_block"]["attention"] == "identity" and spec["unlock"]["last_blocks"] == 2


def test_other_layouts_are_refused_listing_every_key(clip_file, tmp_path):
    path, theirs = clip_file
    state = dict(theirs.state_dict())
    del state["original_image_encoder.ln_post.bias"]
    state["original_image_encoder.extra"] = torch.zeros(2)
    state["register_tokens"] = torch.zeros(8, 48)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(ImportLayoutError) as error:
        import_official("official-clip", tmp_path / "edited.pth", base_backbone("openai-clip-vit-b16"), tmp_path)
    text = str(error.value)
    assert "missing (1): original_image_encoder.ln_post.bias" in text
    assert "unexpected (1): original_image_encoder.extra" in text
    assert "register_tokens (8, 48) (expected (16, 48))" in text and "--registers 16" in text
    # the same check through the command line: one error line, exit status 2, nothing written
    assert main(["adapter", "import", "--format", "official-dinov2", str(path), "--backbone", *DINO_BASE,
                 "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(ImportLayoutError, match="needs a timm DINOv2"):
        import_official("official-dinov2", path, base_backbone("openai-clip-vit-b16"), tmp_path)


def test_students_of_other_base_weights_are_refused(clip_file, tmp_path):
    path, _ = clip_file
    with pytest.raises(BaseMismatchError) as error:
        import_official("official-clip", path, base_backbone("openai-clip-vit-b16", seed=1), tmp_path)
    assert "original_image_encoder.class_embedding (max |Δ|" in str(error.value) and "--weights" in str(error.value)
    assert not (tmp_path / "adapter.safetensors").exists()


def test_imported_clip_student_runs_end_to_end(clip_file, tmp_path):
    path, _ = clip_file
    out = tmp_path / "imported"
    assert main(["adapter", "import", "--format", "official-clip", str(path), "--backbone", *CLIP_BASE,
                 "--out", str(out)]) == 0
    assert main(["adapter", "import", "--format", "official-clip", str(path), "--backbone", *CLIP_BASE,
                 "--out", str(out)]) == 2  # an adapter is there already: --overwrite needed
    make_voc(tmp_path / "data")
    template = tmp_path / "one.txt"
    template.write_text("a photo of a {c}.\n")
    results = tmp_path / "results"
    assert main(["run", "--backbone", *CLIP_BASE, "--adapter", str(out / "adapter.safetensors"),
                 "--tasks", "ovseg/voc21", "--data-root", str(tmp_path / "data"), "--results-dir", str(results),
                 "--cache-dir", str(tmp_path / "cache"), "--protocol-override", "resize=40",
                 "--protocol-override", f"templates={template}", "--batch-size", "2"]) == 0
    assert main(["results", "validate", str(results)]) == 0
    (record_path,) = sorted(results.rglob("*__*.json"))
    record = read_result(record_path)
    method = record.identity.method
    assert method.name == "phreg" and method.config["student"]["num_registers"] == 16


# -- the DINOv2 student: a Hugging Face Dinov2Model (transformers modeling_dinov2.py, eager attention, transcribed)
class Dinov2PatchEmbeddings(nn.Module):
    def __init__(self, hidden_size, patch_size, num_patches):
        super().__init__()
        self.num_patches = num_patches
        self.projection = nn.Conv2d(3, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values):
        embeddings = self.projection(pixel_values).flatten(2).transpose(1, 2)
        return embeddings


class Dinov2Embeddings(nn.Module):
    def __init__(self, hidden_size, patch_size, num_patches):
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, hidden_size))
        self.mask_token = nn.Parameter(torch.zeros(1, hidden_size))
        self.patch_embeddings = Dinov2PatchEmbeddings(hidden_size, patch_size, num_patches)
        self.position_embeddings = nn.Parameter(torch.randn(1, num_patches + 1, hidden_size))
        self.patch_size = patch_size

    def interpolate_pos_encoding(self, embeddings, height, width):
        num_patches = embeddings.shape[1] - 1
        num_positions = self.position_embeddings.shape[1] - 1
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        raise NotImplementedError("only the native size is compared (see the module docstring of official.py)")

    def forward(self, pixel_values):
        batch_size, _, height, width = pixel_values.shape
        target_dtype = self.patch_embeddings.projection.weight.dtype
        embeddings = self.patch_embeddings(pixel_values.to(dtype=target_dtype))
        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        embeddings = embeddings + self.interpolate_pos_encoding(embeddings, height, width)
        return embeddings


class Dinov2SelfAttention(nn.Module):
    def __init__(self, hidden_size, heads):
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden_size // heads
        self.all_head_size = hidden_size
        self.scaling = self.attention_head_size ** -0.5
        self.query = nn.Linear(hidden_size, hidden_size, bias=True)
        self.key = nn.Linear(hidden_size, hidden_size, bias=True)
        self.value = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, hidden_states):
        batch_size = hidden_states.shape[0]
        new_shape = batch_size, -1, self.num_attention_heads, self.attention_head_size
        key_layer = self.key(hidden_states).view(*new_shape).transpose(1, 2)
        value_layer = self.value(hidden_states).view(*new_shape).transpose(1, 2)
        query_layer = self.query(hidden_states).view(*new_shape).transpose(1, 2)
        attn_weights = torch.matmul(query_layer, key_layer.transpose(-1, -2)) * self.scaling  # eager_attention_forward
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_layer.dtype)
        attn_output = torch.matmul(attn_weights, value_layer)
        context_layer = attn_output.transpose(1, 2).contiguous()
        new_context_layer_shape = context_layer.size()[:-2] + (self.all_head_size,)
        return context_layer.reshape(new_context_layer_shape)


class Dinov2SelfOutput(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states, input_tensor):
        return self.dense(hidden_states)


class Dinov2Attention(nn.Module):
    def __init__(self, hidden_size, heads):
        super().__init__()
        self.attention = Dinov2SelfAttention(hidden_size, heads)
        self.output = Dinov2SelfOutput(hidden_size)

    def forward(self, hidden_states):
        return self.output(self.attention(hidden_states), hidden_states)


class Dinov2LayerScale(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.lambda1 = nn.Parameter(1.0 * torch.ones(hidden_size))

    def forward(self, hidden_state):
        return hidden_state * self.lambda1


class Dinov2MLP(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, hidden_size * 4, bias=True)
        self.activation = nn.functional.gelu  # ACT2FN["gelu"]
        self.fc2 = nn.Linear(hidden_size * 4, hidden_size, bias=True)

    def forward(self, hidden_state):
        return self.fc2(self.activation(self.fc1(hidden_state)))


class Dinov2Layer(nn.Module):
    def __init__(self, hidden_size, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.attention = Dinov2Attention(hidden_size, heads)
        self.layer_scale1 = Dinov2LayerScale(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = Dinov2MLP(hidden_size)
        self.layer_scale2 = Dinov2LayerScale(hidden_size)

    def forward(self, hidden_states, output_attentions=False):
        self_attention_output = self.layer_scale1(self.attention(self.norm1(hidden_states)))
        hidden_states = self_attention_output + hidden_states
        layer_output = self.layer_scale2(self.mlp(self.norm2(hidden_states)))
        layer_output = layer_output + hidden_states
        return (layer_output,)  # transformers 4.37 (PH-Reg's pin) returns a tuple; their loop takes x[0]


class Dinov2Encoder(nn.Module):
    def __init__(self, hidden_size, heads, layers):
        super().__init__()
        self.layer = nn.ModuleList([Dinov2Layer(hidden_size, heads) for _ in range(layers)])


class Dinov2Model(nn.Module):
    def __init__(self, hidden_size=48, heads=2, layers=2, patch_size=14, image_size=56):
        super().__init__()
        self.embeddings = Dinov2Embeddings(hidden_size, patch_size, (image_size // patch_size) ** 2)
        self.encoder = Dinov2Encoder(hidden_size, heads, layers)
        self.layernorm = nn.LayerNorm(hidden_size, eps=1e-6)


class RegDINOv2Base(nn.Module):
    """0raiser0/PH-Reg DINOv2_full/evaluation/depth/dvt/models/ours_dinov2_new.py RegDINOv2Base, transcribed."""

    def __init__(self, model, num_registers=16):
        super().__init__()
        self.model = model  # AutoModel.from_pretrained(...) in their code
        self.embed = self.model.embeddings
        self.encoder = self.model.encoder
        self.layernorm = self.model.layernorm
        hidden_size = self.model.layernorm.normalized_shape[0]
        self.registers = nn.Parameter(torch.randn(1, num_registers, hidden_size) / (float(hidden_size) ** 0.5))

    def forward(self, images, output_attentions=False, output_hidden_states=False):
        x = self.embed(images)
        x = torch.cat([self.registers.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for layer in self.encoder.layer:
            x = layer(x, output_attentions=output_attentions)
            x = x[0]
        norm_output = self.layernorm(x)
        return {"last_hidden_state": norm_output}


def timm_to_hf(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base's timm DINOv2 tensors under HF Dinov2Model names (the test's own mapping, for building the file)."""
    out = {"embeddings.cls_token": model.cls_token, "embeddings.mask_token": torch.zeros(1, model.embed_dim),
           "embeddings.position_embeddings": model.pos_embed,
           "embeddings.patch_embeddings.projection.weight": model.patch_embed.proj.weight,
           "embeddings.patch_embeddings.projection.bias": model.patch_embed.proj.bias,
           "layernorm.weight": model.norm.weight, "layernorm.bias": model.norm.bias}
    for i, block in enumerate(model.blocks):
        p = f"encoder.layer.{i}."
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        out.update({p + "attention.attention.query.weight": q, p + "attention.attention.query.bias": qb,
                    p + "attention.attention.key.weight": k, p + "attention.attention.key.bias": kb,
                    p + "attention.attention.value.weight": v, p + "attention.attention.value.bias": vb,
                    p + "attention.output.dense.weight": block.attn.proj.weight,
                    p + "attention.output.dense.bias": block.attn.proj.bias,
                    p + "layer_scale1.lambda1": block.ls1.gamma, p + "layer_scale2.lambda1": block.ls2.gamma})
        for name in ("norm1", "norm2"):
            norm = getattr(block, name)
            out.update({p + f"{name}.weight": norm.weight, p + f"{name}.bias": norm.bias})
        for name in ("fc1", "fc2"):
            out.update({p + f"mlp.{name}.weight": getattr(block.mlp, name).weight,
                        p + f"mlp.{name}.bias": getattr(block.mlp, name).bias})
    return {k: v.detach().clone() for k, v in out.items()}


def authors_dinov2_student(seed: int = 0) -> RegDINOv2Base:
    base = base_backbone("dinov2-vit-b14").vision.model  # 2 blocks of width 48, patch 14, 4x4 grid (56 px)
    hf = Dinov2Model(hidden_size=48, heads=2, layers=2, patch_size=14, image_size=56)
    hf.load_state_dict(timm_to_hf(base), strict=True)
    torch.manual_seed(seed)
    student = RegDINOv2Base(hf, num_registers=16)
    for index, trained in enumerate((student.registers, hf.embeddings.position_embeddings,
                                     hf.embeddings.patch_embeddings.projection, hf.encoder.layer[-1])):
        perturb_(trained, seed + index)  # distill_main.py's trainable set
    return student.eval()


def test_dinov2_student_equals_the_authors_forward(tmp_path):
    theirs = authors_dinov2_student()
    state = theirs.state_dict()
    assert {"embed.cls_token", "encoder.layer.1.mlp.fc2.bias", "layernorm.weight", "model.embeddings.mask_token",
            "registers"} <= set(state)  # shared submodules appear under both names, as in their saved files
    torch.save(state, tmp_path / "distilled_dinov2_weights_30.pth")
    assert main(["adapter", "import", "--format", "official-dinov2", str(tmp_path / "distilled_dinov2_weights_30.pth"),
                 "--backbone", *DINO_BASE, "--out", str(tmp_path / "imported")]) == 0
    model = build_phreg(base_backbone("dinov2-vit-b14"), adapter=str(tmp_path / "imported")).double()
    theirs = theirs.double()
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(3)).double()
    with torch.no_grad():
        want = theirs(images)["last_hidden_state"]
        got = model.forward_tokens(images, project=False)[0]
    patches = want[:, 1 + 16:].transpose(1, 2).reshape(2, 48, 4, 4)  # DINOv2_value.py: last_states[:, 1+16:, :]
    assert (got.patches - patches).abs().max() <= TOL
    assert (got.prefix[:, 0] - want[:, 16]).abs().max() <= TOL  # CLS sits after their 16 registers
    assert (got.prefix[:, 1:] - want[:, :16]).abs().max() <= TOL
    spec = model.student.spec()
    assert spec["unlock"]["last_blocks"] == 1 and spec["last_block"] is None and spec["project"] is False


def test_dinov2_aliases_must_agree(tmp_path):
    state = authors_dinov2_student().state_dict()
    state["embed.cls_token"] = state["embed.cls_token"] + 1
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(ImportLayoutError, match="embed.cls_token"):
        import_official("official-dinov2", tmp_path / "edited.pth", base_backbone("dinov2-vit-b14"), tmp_path)
