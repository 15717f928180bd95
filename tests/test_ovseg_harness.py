"""The mmseg-free harness against literal transcriptions of NACLIP's / ClearCLIP's slide inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_seg import tiny_clip_backbone

from phreg_bench.geometry import rescale_size, resize_image, window_boxes
from phreg_bench.registries import METHODS
from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor, classify
from phreg_bench.tasks.ovseg.text import ClassQueries


def test_rescale_size_follows_mmcv_keep_ratio():
    # factor = min(2048 / long, short_target / short); size = int(x * factor + 0.5)
    assert rescale_size(375, 500, 448) == (448, 597)  # VOC-like landscape
    assert rescale_size(500, 375, 336) == (448, 336)
    assert rescale_size(1024, 2048, 560) == (560, 1120)  # Cityscapes
    assert rescale_size(100, 3000, 448) == (68, 2048)  # the long-side cap wins
    assert rescale_size(448, 600, 448) == (448, 600)


def test_resize_is_half_pixel_bilinear_rounded():
    image = torch.tensor([[[0.0, 100.0]]]).expand(1, 3, 1, 2)
    out = resize_image(image, (1, 4))
    assert out[0, 0, 0].tolist() == [0.0, 25.0, 75.0, 100.0]
    odd = resize_image(torch.tensor([[[[0.0, 51.0]]]]), (1, 3))
    assert odd.view(-1).tolist() == [0.0, 26.0, 51.0]  # 25.5 rounds to the even 26 (OpenCV's uint8 too)


def nacl_slide_boxes(h_img, w_img, crop, stride):
    """Literal ``forward_slide`` grid of sinahmr/NACLIP naclip.py."""
    h_grids = max(h_img - crop + stride - 1, 0) // stride + 1
    w_grids = max(w_img - crop + stride - 1, 0) // stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h_img), min(x1 + crop, w_img)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out.append((y1, y2, x1, x2))
    return out


@pytest.mark.parametrize("size", [(448, 597), (336, 336), (560, 1120), (100, 50), (30, 400)])
def test_window_grid_matches_naclip(size):
    boxes = window_boxes(*size, crop=336, stride=112)
    assert boxes == nacl_slide_boxes(*size, 336, 112)
    coverage = np.zeros(size)
    for y1, y2, x1, x2 in boxes:
        coverage[y1:y2, x1:x2] += 1
    assert coverage.min() >= 1
    assert len({(y2 - y1, x2 - x1) for y1, y2, x1, x2 in boxes}) == 1  # one window size: batchable


@pytest.fixture(scope="module")
def setup():
    backbone = tiny_clip_backbone(seed=1)
    model = METHODS.get("naclip")(backbone)
    text = F.normalize(torch.randn(5, backbone.output_dim), dim=-1)
    queries = ClassQueries(text, torch.tensor([0, 0, 1, 2, 3]), list("abcde"), 4)
    image = np.random.default_rng(0).integers(0, 256, size=(45, 61, 3), dtype=np.uint8)
    return model, queries, image


def reference_feature(model, img, text, logit_size=None):
    """NACLIP ``forward_feature``: normalised patch features @ text, bilinear to the input (or given) size."""
    # the conv drops trailing pixels: we feed the trimmed window
    feats = model.forward_tokens(img, project=True)[0].patches
    feats = feats / feats.norm(dim=1, keepdim=True)
    logits = torch.einsum("bdhw,qd->bqhw", feats, text)
    return F.interpolate(logits, size=logit_size, mode="bilinear", align_corners=False)


def reference_slide(model, img, text, crop, stride, ori_shape, patch, pad_center=False):
    """Literal NACLIP ``forward_slide`` (and ClearCLIP's padded variant), one window at a time."""
    _, _, h_img, w_img = img.shape
    preds = img.new_zeros((1, text.shape[0], h_img, w_img))
    count = img.new_zeros((1, 1, h_img, w_img))
    for y1, y2, x1, x2 in nacl_slide_boxes(h_img, w_img, crop, stride):
        window = img[:, :, y1:y2, x1:x2]
        height, width = window.shape[2:]
        if pad_center:
            extra_w, extra_h = (-width) % patch, (-height) % patch
            pad = (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)
            padded = F.pad(window, pad)
            logit = reference_feature(model, padded, text, padded.shape[2:])
            logit = logit[:, :, pad[2] : pad[2] + height, pad[0] : pad[0] + width]
        else:
            trimmed = window[:, :, : height // patch * patch, : width // patch * patch]
            logit = reference_feature(model, trimmed, text, (height, width))
        preds += F.pad(logit, (x1, w_img - x2, y1, h_img - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return F.interpolate(preds / count, size=ori_shape, mode="bilinear", align_corners=False)[0]


def normalised_resized(model, image, short):
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    size = rescale_size(*image.shape[:2], short)
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False).round().clamp(0, 255)
    return model.backbone.normalize(resized / 255)


@pytest.mark.parametrize(("crop", "stride", "pad"), [(32, 16, "none"), (24, 16, "none"), (24, 16, "center"),
                                                     (100, 50, "none"), (100, 50, "center")])
@torch.no_grad()
def test_slide_logits_equal_the_reference_loop(setup, crop, stride, pad):
    model, queries, image = setup
    settings = HarnessSettings(resize=50, crop=crop, stride=stride, logit_scale=40, window_pad=pad)
    ours = OVSegPredictor(model, queries, settings, batch_size=3).dense_logits(image)
    img = normalised_resized(model, image, 50)
    expected = reference_slide(model, img, queries.embeddings, crop, stride, image.shape[:2], 8, pad == "center")
    assert ours.shape == (5, 45, 61)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    one_by_one = OVSegPredictor(model, queries, settings, batch_size=1).dense_logits(image)
    torch.testing.assert_close(ours, one_by_one, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_whole_image_mode_upsamples_the_grid_to_the_original_size(setup):
    model, queries, image = setup
    settings = HarnessSettings(resize=50, crop=0, stride=112, logit_scale=40)
    ours = OVSegPredictor(model, queries, settings).dense_logits(image)
    img = normalised_resized(model, image, 50)  # 50 x 68: trailing pixels dropped by the patch conv
    trimmed = img[:, :, :48, :64]
    expected = reference_feature(model, trimmed, queries.embeddings, image.shape[:2])[0]
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_predict_is_classify_of_dense_logits(setup):
    model, queries, image = setup
    settings = HarnessSettings(resize=40, crop=32, stride=16, logit_scale=40, prob_thd=0.3)
    predictor = OVSegPredictor(model, queries, settings)
    pred, logits = predictor.predict(image, out_size=(20, 30))
    assert pred.shape == (20, 30) and logits.shape == (5, 20, 30)
    probs = torch.softmax(40 * logits, 0)
    class_probs = torch.stack([probs[:2].amax(0), probs[2], probs[3], probs[4]])
    expected = class_probs.argmax(0)
    expected[class_probs.amax(0) < 0.3] = 0
    assert torch.equal(pred, expected)
    assert torch.equal(classify(logits, queries, settings), pred)


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="window_pad"):
        HarnessSettings.from_settings({"resize": 1, "crop": 0, "stride": 1, "logit_scale": 1, "window_pad": "x"})
    with pytest.raises(ValueError, match="stride"):
        HarnessSettings.from_settings({"resize": 1, "crop": 8, "stride": 0, "logit_scale": 1})


def test_same_size_bilinear_resize_is_the_identity():
    """The harness skips the final resize when the label size equals the resized size; that is exact."""
    x = torch.randn(1, 7, 13, 17)
    assert torch.equal(F.interpolate(x, size=(13, 17), mode="bilinear", align_corners=False), x)


@pytest.mark.parametrize("crop", [0, 24])
@torch.no_grad()
def test_predict_classes_reuses_buffers_without_changing_results(setup, crop):
    """``predict_classes`` writes the logits into reused buffers; ``predict`` results are never aliased."""
    model, queries, image = setup
    settings = HarnessSettings(resize=40, crop=crop, stride=16, logit_scale=40, prob_thd=0.2)
    predictor = OVSegPredictor(model, queries, settings, batch_size=2)
    other = np.random.default_rng(5).integers(0, 256, size=(52, 38, 3), dtype=np.uint8)
    first_pred, first_logits = predictor.predict(image, out_size=(20, 30))
    kept = first_logits.clone()
    for img, size in ((image, (20, 30)), (other, (52, 38)), (image, (45, 61)), (other, (11, 13))):
        pred, class_logits = predictor.predict_classes(img, out_size=size)
        expected_pred, logits = predictor.predict(img, out_size=size)
        assert torch.equal(pred, expected_pred)
        assert torch.equal(class_logits, queries.synonym_plan(logits))
    assert torch.equal(first_logits, kept)  # later calls did not write into an earlier result
    assert torch.equal(first_pred, predictor.predict(image, out_size=(20, 30))[0])


def test_upsample_into_a_buffer_equals_interpolate():
    from phreg_bench.tasks.ovseg.harness import upsample

    grid = torch.randn(2, 5, 7, 9)
    for size in ((7, 9), (30, 41), (5, 4)):
        out = torch.full((2, 5, *size), float("nan"))
        assert torch.equal(upsample(grid, size, out), F.interpolate(grid, size=size, mode="bilinear",
                                                                    align_corners=False))
