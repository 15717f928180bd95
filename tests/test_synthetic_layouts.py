"""The synthetic world written in the VOC, ADE20K and NYUv2 layouts loads through the real readers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from phreg_bench.synthetic.scenes import render
from phreg_bench.synthetic.writers import VAL_START, voc_palette, write_all

SIZE = 32


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic-data")
    write_all(root, n_train=3, n_val=2, size=SIZE, seed=0)
    return root


def test_voc_layout(data_root):
    from phreg_bench.datasets.pascal import VOC21

    val = VOC21(data_root, split="val")
    assert len(val) == 2
    for i, sample in enumerate(val):
        scene = render(VAL_START + i, SIZE, 0)
        np.testing.assert_array_equal(sample.label, scene.labels)
        assert sample.image.shape == (SIZE, SIZE, 3)
        assert np.abs(sample.image.astype(int) - scene.image.astype(int)).mean() < 6  # JPEG, quality 95
    with Image.open(val.pairs[0][2]) as label:
        assert label.mode == "P" and label.getpalette()[:6] == voc_palette()[:6]
    assert len(VOC21(data_root, split="train_aug")) == 3
    assert len(VOC21(data_root, split="trainval")) == 5


def test_ade_layout(data_root):
    from phreg_bench.datasets.ade import ADE20K

    train = ADE20K(data_root, split="train")
    assert len(train) == 3
    # stored as id + 1; the reader's reduce_zero_label gives the synthetic ids back
    np.testing.assert_array_equal(train[1].label, render(1, SIZE, 0).labels)


def test_nyu_layout(data_root):
    from phreg_bench.datasets.nyu import NYUv2Depth

    test = NYUv2Depth(data_root, split="test")
    assert test.source == "sync" and len(test) == 2
    sample = test[0]
    np.testing.assert_allclose(sample.depth, render(VAL_START, SIZE, 0).depth, atol=5e-4)  # millimetre PNGs
    assert len(NYUv2Depth(data_root, split="train")) == 3


def test_rewriting_is_idempotent(data_root):
    before = sorted(p.relative_to(data_root) for p in data_root.rglob("*") if p.is_file())
    write_all(data_root, n_train=3, n_val=2, size=SIZE, seed=0)
    after = sorted(p.relative_to(data_root) for p in data_root.rglob("*") if p.is_file())
    assert before == after  # no temp files left behind
