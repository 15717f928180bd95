"""Figures: the joint PCA, the PNG writers, the text heatmap and the `phreg-bench viz` command."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from phreg_bench.viz import Panel, comparison_figure, joint_pca_rgb, norm_histogram, require_matplotlib

pytest.importorskip("matplotlib")


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_joint_pca_is_shared_across_models():
    torch.manual_seed(0)
    a = torch.randn(16, 5, 6)
    b = a.clone()
    b[:, 0, 0] += 40.0  # one artifact-like token
    maps = joint_pca_rgb([a, b])
    assert all(m.shape == (5, 6, 3) and m.min() >= 0 and m.max() <= 1 for m in maps)
    # identical tokens get identical colours in both models (one PCA, one colour range)
    np.testing.assert_allclose(maps[0][1:], maps[1][1:], atol=1e-6)
    # a different width gets its own PCA and is still mapped
    other = joint_pca_rgb([a, torch.randn(8, 5, 6)])
    assert other[1].shape == (5, 6, 3)
    np.testing.assert_allclose(joint_pca_rgb([a])[0], other[0], atol=1e-6)


def test_figures_are_written(tmp_path):
    torch.manual_seed(0)
    image = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    panels = [Panel("raw", torch.randn(8, 10, 10)), Panel("clean", torch.randn(8, 10, 10), torch.rand(10, 10))]
    path = comparison_figure(image, panels, tmp_path / "sub" / "cmp.png", title="t", query="a cat")
    width, height = _png_size(path)
    assert width > 400 and height > 300
    hist = norm_histogram({"raw": np.abs(np.random.default_rng(1).normal(8, 1, 200)), "clean": np.full(50, 8.0)},
                          tmp_path / "hist.png")
    assert _png_size(hist)[0] > 300
    assert not list(tmp_path.rglob(".*.png"))  # atomic writes leave no temp files


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"phreg-bench\[viz\]"):
        require_matplotlib()


def test_text_heatmap_for_text_backbones():
    from fixtures_seg import tiny_clip_backbone

    from phreg_bench.methods.base import build_raw
    from phreg_bench.viz import model_panel

    backbone = tiny_clip_backbone()
    model = build_raw(backbone).eval()
    image = backbone.normalize(torch.rand(1, 3, 32, 32))
    panel = model_panel("tiny-clip", model, image, query="a red disc")
    assert panel.patches.shape == (backbone.embed_dim, 4, 4)
    assert panel.heatmap is not None and panel.heatmap.shape == (4, 4)
    assert panel.heatmap.abs().max() <= 1.0 + 1e-5  # a cosine similarity
    assert model_panel("x", model, image).heatmap is None


def test_viz_command(tmp_path):
    from phreg_bench.cli import main

    out = tmp_path / "figs"
    code = main(["viz", "-b", "planted-vit", "-b", "planted-vit-twin", "-m", "raw", "-m", "tta:views=2",
                 "--synthetic", "5", "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["norm_histogram.png", "viz_synthetic-5.png"]
    width, _ = _png_size(out / "viz_synthetic-5.png")
    assert width > 800  # input + four model columns


def test_viz_command_reads_images_and_datasets(tmp_path):
    from phreg_bench.cli import main
    from phreg_bench.synthetic.scenes import render
    from phreg_bench.synthetic.writers import write_voc

    Image.fromarray(render(1, 50).image).save(tmp_path / "photo.png")
    write_voc(tmp_path / "data", n_train=1, n_val=2, size=40)
    out = tmp_path / "figs"
    code = main(["viz", "--image", str(tmp_path / "photo.png"), "--dataset", "voc21", "--index", "1",
                 "--data-root", str(tmp_path / "data"), "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.glob("viz_*.png")} == {"viz_photo.png", "viz_voc21-val-1.png"}
    assert main(["viz", "--index", "0", "--out", str(out)]) == 2  # --index without --dataset
