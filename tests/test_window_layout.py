"""One sliding-window layout for the whole project: every pixel of every image size is covered by >= 1 window,
and settings that cannot guarantee that (stride > crop) are refused by their option names before work starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_seg import tiny_clip_backbone
from hypothesis import given, settings
from hypothesis import strategies as st

from phreg_bench.backbones.builtin import build_tiny_vit
from phreg_bench.geometry import WindowLayoutError, check_window_settings, window_boxes
from phreg_bench.probes.protocol import WINDOW_OPTION_NAMES
from phreg_bench.registries import METHODS, TASK_FAMILIES, TASKS
from phreg_bench.tasks.base import RunContext
from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor
from phreg_bench.tasks.ovseg.text import ClassQueries


def covered(height: int, width: int, boxes) -> np.ndarray:
    count = np.zeros((height, width), dtype=np.int64)
    for y1, y2, x1, x2 in boxes:
        count[y1:y2, x1:x2] += 1
    return count


def mmseg_grid(height, width, crop, stride):
    """Literal mmseg ``EncoderDecoder.slide_inference`` window loop (h_grids / w_grids, edge-flush last window)."""
    h_grids = max(height - crop + stride - 1, 0) // stride + 1
    w_grids = max(width - crop + stride - 1, 0) // stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            y1, x1 = max(y2 - crop, 0), max(x2 - crop, 0)
            out.append((y1, y2, x1, x2))
    return out


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 200), width=st.integers(1, 200), crop=st.integers(1, 64), stride=st.integers(1, 64))
def test_layout_covers_every_pixel_exactly_when_stride_is_at_most_crop(height, width, crop, stride):
    if stride > crop:
        with pytest.raises(WindowLayoutError):
            window_boxes(height, width, crop, stride)
        # refusing is right: the mmseg grid leaves pixels uncovered for an image spanning three windows
        span = 2 * stride + crop
        assert covered(span, span, mmseg_grid(span, span, crop, stride)).min() == 0
        return
    boxes = window_boxes(height, width, crop, stride)
    assert boxes == mmseg_grid(height, width, crop, stride)  # the layout itself is unchanged
    assert covered(height, width, boxes).min() >= 1
    assert window_boxes(height, width, crop, stride, names=WINDOW_OPTION_NAMES) == boxes  # linseg's names, same layout


def test_refusal_names_the_options_as_typed():
    with pytest.raises(WindowLayoutError, match=r"stride=400 is larger than crop=336.*--protocol-override stride"):
        check_window_settings(336, 400)
    with pytest.raises(WindowLayoutError, match=r"slide_stride=600 is larger than input_size=518"):
        window_boxes(1000, 1000, 518, 600, names=WINDOW_OPTION_NAMES)
    with pytest.raises(WindowLayoutError, match="stride=0"):
        window_boxes(10, 10, 4, 0)


def test_ovseg_settings_with_stride_above_crop_are_refused_before_any_logits():
    # Before: HarnessSettings accepted this and the uncovered pixels got 0/0 = NaN logits, scored as class 0.
    with pytest.raises(WindowLayoutError, match=r"stride=40 is larger than crop=24"):
        HarnessSettings(resize=0, crop=24, stride=40, logit_scale=40).validate()
    spec = TASKS.get("ovseg/voc21")
    family = TASK_FAMILIES.get("ovseg")()
    resolved = family.resolve_settings(spec, None, RunContext())
    resolved["stride"] = resolved["crop"] + 1  # what --protocol-override stride=N does after resolution
    model = METHODS.get("raw")(tiny_clip_backbone())
    with pytest.raises(WindowLayoutError, match=r"stride=337 is larger than crop=336"):
        family.run(model, spec, resolved, RunContext(data_root=None))  # before text, data or model work


def test_an_accepted_layout_never_yields_nan_logits():
    backbone = tiny_clip_backbone()
    model = METHODS.get("raw")(backbone)
    text = F.normalize(torch.randn(3, backbone.output_dim), dim=-1)
    queries = ClassQueries(text, torch.arange(3), list("abc"), 3)
    image = np.random.default_rng(0).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    logits = OVSegPredictor(model, queries, HarnessSettings(resize=0, crop=24, stride=24, logit_scale=40)) \
        .dense_logits(image)
    assert torch.isfinite(logits).all()


def test_linseg_refuses_slide_stride_above_input_size_before_reading_data(tmp_path):
    spec = TASKS.get("linseg/voc21")
    family = TASK_FAMILIES.get("linseg")()
    resolved = family.resolve_settings(spec, None, RunContext())
    resolved.update(input_size=48, slide_stride=64)  # --protocol-override input_size=48 slide_stride=64
    model = METHODS.get("raw")(build_tiny_vit())
    with pytest.raises(WindowLayoutError, match=r"slide_stride=64 is larger than input_size=48"):
        family.run(model, spec, resolved, RunContext(data_root=tmp_path, cache_dir=tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()  # nothing was extracted or cached
