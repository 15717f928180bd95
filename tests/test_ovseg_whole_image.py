"""Whole-image mode (``crop = 0``) against literal transcriptions of NACLIP's and PH-Reg's ``predict`` path.

NACLIP resizes the patch-grid logits to the original label size in one step (``forward_feature(img,
ori_shape)``); PH-Reg does the same and then interpolates again to ``ori_shape`` (an identity at that size).
The tiny CLIP-like ``net`` below exposes the reference call signatures over a random tiny CLIP tower.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_seg import tiny_clip_backbone
from torch import nn

from phreg_bench.geometry import rescale_size
from phreg_bench.registries import METHODS
from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor
from phreg_bench.tasks.ovseg.text import ClassQueries

NUM_REGISTERS = 16


class TinyClipNet(nn.Module):
    """``encode_image(img, return_all=True)`` → ``[B, 1 + N, D]`` (CLS, patches row-major), as CLIP's.

    Inputs need not be multiples of the patch size: CLIP's strided patch convolution drops the trailing
    pixels, which the wrapper does by cropping them before the tower.
    """

    def __init__(self, model, registers: int = 0):
        super().__init__()
        self.model = model
        self.visual = nn.Module()
        self.visual.patch_size = model.backbone.patch_size
        self.registers = torch.randn(registers, model.backbone.output_dim)

    def encode_image(self, img, return_all=True):
        patch = self.visual.patch_size
        img = img[..., : img.shape[-2] // patch * patch, : img.shape[-1] // patch * patch]
        out = self.model.forward_tokens(img, project=True)[0]
        tokens = out.patches.flatten(2).transpose(1, 2)
        cls = torch.zeros(tokens.shape[0], 1, tokens.shape[2])
        return torch.cat([cls, tokens, self.registers.expand(tokens.shape[0], -1, -1)], 1)


def naclip_forward_feature(net, query_features, img, logit_size=None):
    # sinahmr/NACLIP naclip.py NACLIP.forward_feature
    if type(img) == list:  # noqa: E721 (transcribed)
        img = img[0]

    image_features = net.encode_image(img, return_all=True)
    image_features = image_features[:, 1:]
    image_features /= image_features.norm(dim=-1, keepdim=True)

    logits = image_features @ query_features.T

    patch_size = net.visual.patch_size
    w, h = img[0].shape[-2] // patch_size, img[0].shape[-1] // patch_size
    out_dim = logits.shape[-1]
    logits = logits.permute(0, 2, 1).reshape(-1, out_dim, w, h)
    logits = nn.functional.interpolate(logits, size=logit_size if logit_size else img.shape[-2:],
                                       mode='bilinear', align_corners=False)
    return logits


def phreg_predict_whole(reg_vit, query_features, inputs, ori_shape, patch_size):
    # 0raiser0/PH-Reg zero_shot/segmentor.py DistilledMaskCLIP.forward_feature + predict (slide_crop = 0)
    def forward_feature(img, logit_size=None):
        image_features = reg_vit.encode_image(img)
        image_features /= image_features.norm(dim=-1, keepdim=True)
        image_features = image_features[:, 1:-16, :]

        logits = image_features @ query_features.T

        w, h = img[0].shape[-2] // patch_size, img[0].shape[-1] // patch_size
        out_dim = logits.shape[-1]
        logits = logits.permute(0, 2, 1).reshape(-1, out_dim, w, h)

        if logit_size is None:
            logits = nn.functional.interpolate(logits, size=img.shape[-2:], mode='bilinear')
        else:
            logits = nn.functional.interpolate(logits, size=logit_size, mode='bilinear')
        return logits

    with torch.no_grad():
        seg_logits = forward_feature(inputs, ori_shape)
    img_size = ori_shape
    seg_logits = nn.functional.interpolate(seg_logits, size=img_size, mode='bilinear', align_corners=False)
    return seg_logits


@pytest.fixture(scope="module")
def setup():
    backbone = tiny_clip_backbone(seed=2)
    model = METHODS.get("naclip")(backbone)
    text = F.normalize(torch.randn(6, backbone.output_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    queries = ClassQueries(text, torch.tensor([0, 0, 1, 2, 3, 3]), list("abcdef"), 4)
    return model, queries


def _inputs(model, image, short):
    """mmseg's keep-ratio resize (rounded like OpenCV's uint8 output) and the model's normalisation."""
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    size = rescale_size(*image.shape[:2], short)
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    return model.backbone.normalize(resized / 255)


@pytest.mark.parametrize(("size", "short"), [((45, 61), 50), ((37, 29), 40), ((64, 48), 64), ((30, 70), 33)])
@torch.no_grad()
def test_whole_image_logits_equal_naclip_and_phreg(setup, size, short):
    model, queries = setup
    image = np.random.default_rng(size[0]).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    settings = HarnessSettings(resize=short, crop=0, stride=112, logit_scale=40, prob_thd=0.1)
    predictor = OVSegPredictor(model, queries, settings)
    ours = predictor.dense_logits(image)
    inputs = _inputs(model, image, short)
    text = queries.embeddings
    naclip = naclip_forward_feature(TinyClipNet(model), text, inputs, logit_size=size)[0]
    phreg = phreg_predict_whole(TinyClipNet(model, NUM_REGISTERS), text, inputs, size,
                                model.backbone.patch_size)[0]
    assert ours.shape == naclip.shape == phreg.shape == (6, *size)
    torch.testing.assert_close(ours, naclip, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, phreg, rtol=1e-5, atol=1e-6)
    assert torch.equal(naclip, phreg)  # PH-Reg's second interpolation to ori_shape is the identity
    pred, class_logits = predictor.predict_classes(image)
    assert torch.equal(pred, predictor.predict(image)[0]) and class_logits.shape == (4, *size)
