"""Figure geometry, names, titles and layout: the whole image is shown, no figure overwrites another, titles
never overprint, a failed run leaves no folder, and the text heatmap has a colour bar with its scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from phreg_bench.viz import Panel, comparison, model_input, require_matplotlib, wrap_title

pytest.importorskip("matplotlib")


def _bordered(height: int, width: int) -> np.ndarray:
    """Grey image with a red left, blue right, green top and yellow bottom border of 12 px."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[:, :12] = (255, 0, 0)
    image[:, -12:] = (0, 0, 255)
    image[:12, 12:-12] = (0, 255, 0)
    image[-12:, 12:-12] = (255, 255, 0)
    return image


@pytest.mark.parametrize(("height", "width", "size", "patch"), [(333, 517, 224, 16), (517, 333, 224, 14),
                                                                  (300, 300, 40, 4), (480, 640, 448, 16)])
def test_model_input_keeps_the_whole_image(height, width, size, patch):
    pixels = model_input(_bordered(height, width), size, patch)
    _, channels, new_height, new_width = pixels.shape
    assert channels == 3 and min(new_height, new_width) == size
    assert new_height % patch == 0 and new_width % patch == 0
    # the aspect ratio is kept to within half a patch over the long side
    long_old, long_new = max(height, width), max(new_height, new_width)
    assert abs(long_old * size / min(height, width) - long_new) <= patch / 2
    # every border survives (a centre crop loses two of them)
    rgb = (pixels[0].permute(1, 2, 0) * 255).round()
    mid_row, mid_col = new_height // 2, new_width // 2
    np.testing.assert_allclose(rgb[mid_row, 1].numpy(), [255, 0, 0], atol=30)
    np.testing.assert_allclose(rgb[mid_row, -2].numpy(), [0, 0, 255], atol=30)
    np.testing.assert_allclose(rgb[1, mid_col].numpy(), [0, 255, 0], atol=30)
    np.testing.assert_allclose(rgb[-2, mid_col].numpy(), [255, 255, 0], atol=30)


def test_model_input_rejects_a_size_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        model_input(_bordered(40, 60), 100, 16)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_long_titles_are_wrapped_and_never_overprint():
    plt = require_matplotlib()
    long = "openclip-vit-b16-laion2b / tta:views=10,inner=naclip,flip=true,scales=0.5;0.75;1.0;1.25"
    panels = [Panel(long, torch.randn(8, 6, 9), torch.rand(6, 9)), Panel(long + "-twin", torch.randn(8, 6, 9)),
              Panel("x" * 200, torch.randn(8, 6, 9), torch.rand(6, 9))]
    image = (np.random.default_rng(0).random((48, 72, 3)) * 255).astype(np.uint8)
    fig = comparison(plt, image, panels, title="a/very/long/path/" * 20, query="a photo of " * 12,
                     input_note="517×333 px resized to 352×224 (whole image)")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles = [ax.title.get_window_extent(renderer) for ax in fig.axes[:4] if ax.get_title()]
        assert len(titles) == 4
        assert not any(_overlaps(a, b) for i, a in enumerate(titles) for b in titles[i + 1:])
        texts = [t for ax in fig.axes for t in ax.texts]  # the row labels in the first column and "no text tower"
        assert len(texts) == 3
        for text in texts:  # each stays inside its own panel
            box, cell = text.get_window_extent(renderer), text.axes.get_window_extent(renderer)
            assert box.x0 >= cell.x0 - 1 and box.x1 <= cell.x1 + 1, text.get_text()
        suptitle = fig.get_suptitle()
        assert suptitle and fig.texts[0].get_window_extent(renderer).width <= fig.bbox.width
    finally:
        plt.close(fig)


def test_wrap_title_bounds_lines_and_width():
    text = wrap_title("x" * 500, 2.3)
    assert len(text.splitlines()) == 3 and text.endswith("…")
    assert wrap_title("raw", 2.3) == "raw"


def test_text_heatmap_has_a_colour_bar_with_its_scale():
    plt = require_matplotlib()
    heat = torch.linspace(-0.2, 0.3, 16).reshape(4, 4)
    panels = [Panel("clip", torch.randn(8, 4, 4), heat), Panel("dino", torch.randn(8, 4, 4))]
    fig = comparison(plt, np.zeros((32, 32, 3), np.uint8), panels, query="a cat")
    try:
        bars = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
        assert set(bars) == {"patch-token L2 norm", "cosine similarity"}
        low, high = bars["cosine similarity"].get_ylim()
        assert low == pytest.approx(-0.2) and high == pytest.approx(0.3)
    finally:
        plt.close(fig)


def test_inputs_with_the_same_name_get_their_own_figures(tmp_path):
    from phreg_bench.cli import main
    from phreg_bench.synthetic.scenes import render

    for i, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        Image.fromarray(render(i, 40).image).save(tmp_path / folder / "img.png")
    Image.fromarray(render(7, 40).image).save(tmp_path / "synthetic-5.png")
    out = tmp_path / "figs"
    code = main(["viz", "--image", str(tmp_path / "a" / "img.png"), "--image", str(tmp_path / "b" / "img.png"),
                 "--image", str(tmp_path / "a" / "img.png"), "--image", str(tmp_path / "synthetic-5.png"),
                 "--synthetic", "5", "--image", str(tmp_path / "a" / ".." / "a" / "img.png"), "--out", str(out)])
    assert code == 0
    figures = sorted(p.name for p in out.glob("viz_*.png"))
    assert len(figures) == 4, figures  # a/img.png (given three times), b/img.png, the file and the scene
    assert "viz_synthetic-5.png" not in figures  # both ambiguous: both get a hash
    assert sum(name.startswith("viz_img-") for name in figures) == 2


def test_non_square_image_end_to_end(tmp_path):
    from phreg_bench.cli import main

    Image.fromarray(_bordered(333, 517)).save(tmp_path / "wide.png")
    out = tmp_path / "figs"
    assert main(["viz", "--image", str(tmp_path / "wide.png"), "--size", "40", "--out", str(out)]) == 0
    with Image.open(out / "viz_wide.png") as figure:
        width, height = figure.size
    assert width > height  # the cells follow the input's aspect ratio


def test_a_failed_run_leaves_no_output_folder(tmp_path):
    from phreg_bench.cli import main

    out = tmp_path / "figs"
    assert main(["viz", "--image", str(tmp_path / "missing.png"), "--out", str(out)]) != 0
    assert not out.exists()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    try:
        code = main(["viz", "--image", str(tmp_path / "broken.png"), "--out", str(out)])
    except Exception:  # whichever error the image reader raises, and however the CLI reports it
        code = None
    assert code != 0 and not out.exists()
