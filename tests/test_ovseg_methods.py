"""Each training-free method's dense logits equal its paper's equation, written out independently here
with explicit matrix products and softmaxes on the same random open_clip weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fixtures_seg import tiny_clip_backbone

from phreg_bench.registries import METHODS


def gaussian_bias(rows: int, cols: int, std: float) -> torch.Tensor:
    """NACLIP's Ω over patches, built the way NACLIP does: a (2h−1)×(2w−1) Gaussian window centred on each
    patch, Ω[(i,j),(k,l)] = window[k − i + h − 1, l − j + w − 1] = exp(−((i−k)² + (j−l)²) / (2σ²))."""
    dy = torch.arange(-(rows - 1), rows, dtype=torch.float64)
    dx = torch.arange(-(cols - 1), cols, dtype=torch.float64)
    window = torch.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * std**2))
    omega = torch.zeros(rows * cols, rows * cols, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            for k in range(rows):
                for m in range(cols):
                    omega[i * cols + j, k * cols + m] = window[k - i + rows - 1, m - j + cols - 1]
    return omega


def reference_logits(backbone, images: torch.Tensor, text: torch.Tensor, method: str, std: float = 5.0):
    """Cosine logits ``[B, Q, h, w]`` of ``method`` computed from the paper equations (reference notes §4)."""
    visual = backbone.vision.visual
    tokens, layout = backbone.vision.embed(images)  # patch + positional embedding (not under test)
    x = visual.ln_pre(tokens)
    for block in visual.transformer.resblocks[:-1]:  # open_clip's own blocks
        x = block(x)
    last = visual.transformer.resblocks[-1]
    y = last.ln_1(x).double()
    width = y.shape[-1]
    heads = last.attn.num_heads
    d = width // heads
    s = d**-0.5
    w_in, b_in = last.attn.in_proj_weight.double(), last.attn.in_proj_bias.double()
    q, k, v = (y @ w_in.T + b_in).split(width, dim=-1)

    def per_head(t):
        return t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # [B, H, N, d]

    q, k, v = per_head(q), per_head(k), per_head(v)
    n = q.shape[2]
    if method in ("maskclip", "maskclip-official"):
        attn = torch.eye(n, dtype=torch.float64)  # value path: each token keeps its own value
    elif method == "raw":
        attn = torch.softmax(q @ k.transpose(-1, -2) * s, dim=-1)
    elif method == "sclip":
        attn = torch.softmax(q @ q.transpose(-1, -2) * s, -1) + torch.softmax(k @ k.transpose(-1, -2) * s, -1)
    elif method == "clearclip":
        attn = torch.softmax(q @ q.transpose(-1, -2) * s, dim=-1)
    elif method == "naclip":
        rows, cols = layout.grid
        omega = torch.zeros(n, n, dtype=torch.float64)
        omega[1:, 1:] = gaussian_bias(rows, cols, std)  # CLS row and column get no bias
        attn = torch.softmax(k @ k.transpose(-1, -2) * s + omega, dim=-1)
    else:
        raise ValueError(method)
    mixed = (attn @ v).transpose(1, 2).reshape(x.shape[0], n, width)
    out = mixed @ last.attn.out_proj.weight.double().T + last.attn.out_proj.bias.double()
    if method in ("raw", "maskclip-official", "sclip"):  # residual and FFN kept
        h = x.double() + out
        out = h + last.mlp(last.ln_2(h.float())).double()
    feats = visual.ln_post(out.float()).double() @ visual.proj.double()
    feats = feats[:, 1:]  # drop CLS
    feats = feats / feats.norm(dim=-1, keepdim=True)
    logits = feats @ text.double().T
    rows, cols = layout.grid
    return logits.transpose(1, 2).reshape(images.shape[0], -1, rows, cols)


METHODS_UNDER_TEST = ["raw", "maskclip", "maskclip-official", "sclip", "clearclip", "naclip"]


@pytest.fixture(scope="module")
def backbone():
    return tiny_clip_backbone(seed=3)


@pytest.mark.parametrize("method", METHODS_UNDER_TEST)
@torch.no_grad()
def test_dense_logits_equal_the_paper_equation(backbone, method):
    images = backbone.normalize(torch.rand(2, 3, 40, 48))  # a 5x6 grid: catches row/column mix-ups
    text = F.normalize(torch.randn(7, backbone.output_dim), dim=-1)
    model = METHODS.get(method)(backbone)
    feats = F.normalize(model.forward_tokens(images, project=True)[0].patches.double(), dim=1)
    ours = torch.einsum("bdhw,qd->bqhw", feats, text.double())
    expected = reference_logits(backbone, images, text, method)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_methods_differ_from_each_other(backbone):
    images = backbone.normalize(torch.rand(1, 3, 32, 32))
    outs = {m: METHODS.get(m)(backbone).forward_tokens(images, project=True)[0].patches for m in METHODS_UNDER_TEST}
    for a in METHODS_UNDER_TEST:
        for b in METHODS_UNDER_TEST:
            if a < b:
                assert not torch.allclose(outs[a], outs[b], atol=1e-4), (a, b)


def test_method_config_and_options(backbone):
    naclip = METHODS.get("naclip")(backbone)
    assert naclip.method_config == {"attention": "kk+gaussian", "residual": False, "ffn": False,
                                    "gaussian_std": 5.0}
    wider = METHODS.get("naclip")(backbone, gaussian_std=2.0)
    assert wider.method_config["gaussian_std"] == 2.0
    images = backbone.normalize(torch.rand(1, 3, 40, 48))
    text = F.normalize(torch.randn(3, backbone.output_dim), dim=-1)
    feats = F.normalize(wider.forward_tokens(images, project=True)[0].patches.double(), dim=1)
    torch.testing.assert_close(torch.einsum("bdhw,qd->bqhw", feats, text.double()),
                               reference_logits(backbone, images, text, "naclip", std=2.0), rtol=1e-4, atol=1e-5)
    assert METHODS.get("maskclip-official")(backbone).method_config["residual"] is True
    with pytest.raises(ValueError, match="takes no options"):
        METHODS.get("sclip")(backbone, gaussian_std=3)


def test_gaussian_bias_reference_is_the_closed_form():
    omega = gaussian_bias(3, 4, 5.0)
    i, j, k, m = 2, 0, 0, 3
    assert omega[i * 4 + j, k * 4 + m] == pytest.approx(math.exp(-((i - k) ** 2 + (j - m) ** 2) / 50))
