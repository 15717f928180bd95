"""The one image reader (phreg_core.images): every Pillow mode converted by its stated rule or refused by name,
and the same rule in the dataset readers, `viz` and the distillation image folder; label readers stay index-exact."""

from __future__ import annotations

import argparse
import io
import types
import warnings

import numpy as np
import pytest
from fixtures_seg import make_voc, write_label
from PIL import Image

from phreg_bench.cli.viz import load_inputs
from phreg_bench.datasets.base import DatasetError, read_image, read_label
from phreg_bench.registries import DATASETS
from phreg_core.data import HFImageDataset, ImageFolderDataset
from phreg_core.images import ImageReadError, open_rgb, read_rgb, to_rgb

GREY16 = np.array([[0, 255, 256, 4095], [32768, 40000, 65280, 65535]], dtype=np.uint16)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def save(path, image: Image.Image):
    image.save(path)
    return path


def expected_grey16(values: np.ndarray) -> np.ndarray:
    """The documented rule: the high byte of each 16-bit value, replicated to RGB."""
    return np.repeat((values.astype(np.uint32) // 256).astype(np.uint8)[..., None], 3, axis=2)


def test_16_bit_greyscale_png_is_scaled_by_its_bit_depth_not_saturated(tmp_path):
    path = save(tmp_path / "g16.png", Image.fromarray(GREY16))
    with Image.open(path) as image:
        assert image.mode == "I;16"
        assert (np.asarray(image.convert("RGB"))[1] == 255).all()  # the bug: every bright pixel is white
    out = read_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    assert np.array_equal(out, expected_grey16(GREY16))
    assert np.array_equal(read_image(path), out)  # the dataset readers use the same rule


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16_bit_byte_orders(mode):
    image = Image.frombytes(mode, (4, 2), GREY16.astype(">u2" if mode.endswith("B") else "<u2").tobytes())
    assert np.array_equal(np.asarray(to_rgb(image)), expected_grey16(GREY16))


def test_32_bit_integer_greyscale_uses_the_tiff_bit_depth(tmp_path):
    path = save(tmp_path / "i32.tif", Image.fromarray(GREY16.astype(np.int32)))
    with Image.open(path) as image:
        assert image.mode == "I" and image.tag_v2.get(258) in (32, (32,))
    out = read_rgb(path)  # 32 bits per sample: v >> 24 -> these small values are black
    assert np.array_equal(out, np.zeros((2, 4, 3), np.uint8))
    png16 = Image.fromarray(GREY16.astype(np.int32), mode="I")
    png16.format = "PNG"  # Pillow versions that read 16-bit grey PNGs as mode "I"
    assert np.array_equal(np.asarray(to_rgb(png16)), expected_grey16(GREY16))
    negative = Image.fromarray(np.array([[-1, 5]], dtype=np.int32), mode="I")
    negative.format = "PNG"
    with pytest.raises(ImageReadError, match="outside 0..65535"):
        to_rgb(negative, "neg.png")


def test_float_greyscale_in_unit_range_is_scaled_and_other_ranges_are_refused(tmp_path):
    unit = np.array([[0.0, 0.5], [0.25, 1.0]], dtype=np.float32)
    path = save(tmp_path / "f.tif", Image.fromarray(unit))
    assert np.array_equal(read_rgb(path)[..., 0], np.rint(unit * 255).astype(np.uint8))
    wide = save(tmp_path / "wide.tif", Image.fromarray(unit * 300))
    with pytest.raises(ImageReadError, match=r"wide\.tif.*0\.\.300"):
        read_rgb(wide)


def test_alpha_is_dropped_and_palettes_give_colours(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    assert np.array_equal(read_rgb(save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))), rgba[..., :3])
    la = np.array([[[7, 0], [250, 128]]], dtype=np.uint8)
    assert np.array_equal(read_rgb(save(tmp_path / "la.png", Image.fromarray(la, "LA")))[..., 1], la[..., 0])
    palette = Image.frombytes("P", (2, 1), bytes([0, 1]))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 0
    out = read_rgb(save(tmp_path / "p.png", palette))
    assert out.tolist() == [[[255, 0, 0], [0, 0, 255]]]  # colours, the transparent index keeps its colour
    bilevel = Image.fromarray(np.array([[True, False]]))
    assert np.asarray(to_rgb(bilevel)).tolist() == [[[255, 255, 255], [0, 0, 0]]]


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La", "PA"])
def test_other_pillow_modes_use_pillows_conversion(mode):
    image = Image.new(mode, (2, 2))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (2, 2)


def test_unknown_modes_truncated_files_and_bombs_are_one_line_naming_the_file(tmp_path, monkeypatch):
    with pytest.raises(ImageReadError, match=r"thing\.bin.*mode 'XYZ'"):  # every Pillow mode is handled above
        to_rgb(types.SimpleNamespace(mode="XYZ"), "thing.bin")
    good = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*truncated or corrupt") as error:
        read_rgb(truncated)
    assert "\n" not in str(error.value)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text\.png"):
        read_rgb(tmp_path / "text.png")
    with pytest.raises(ImageReadError, match=r"missing\.png is missing"):
        read_rgb(tmp_path / "missing.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 4)  # 64x64 is over twice the limit: an error
    with pytest.raises(ImageReadError, match=r"big\.jpg.*decompression bomb.*MAX_IMAGE_PIXELS"):
        read_rgb(good)
    with pytest.raises(DatasetError, match=r"big\.jpg.*decompression bomb"):
        read_image(good)


def test_viz_reads_images_by_the_same_rule(tmp_path):
    path = save(tmp_path / "g16.png", Image.fromarray(GREY16))
    args = argparse.Namespace(image=[path], synthetic=None, dataset=None, index=None)
    [(name, image)] = load_inputs(args)
    assert name == "g16" and np.array_equal(image, expected_grey16(GREY16))


def test_distillation_folder_and_hf_rows_read_by_the_same_rule(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    grey = np.full((16, 16), 40000, dtype=np.uint16)  # uniform: every crop / resize keeps the value
    save(folder / "a.png", Image.fromarray(grey))
    item = ImageFolderDataset(folder, 8, MEAN, STD)[0]
    expected = ((40000 // 256) / 255 - 0.5) / 0.25
    assert abs(float(item["image"].mean()) - expected) < 1e-5 and float(item["image"].std()) < 1e-5
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ImageFolderDataset(folder, 8, MEAN, STD)[1] is None
    assert any("b.png" in str(w.message) for w in caught)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    rows = [{"image": {"bytes": buffer.getvalue()}}, {"image": Image.fromarray(grey)}]
    for row in HFImageDataset(rows, 8, MEAN, STD):
        assert abs(float(row["image"].mean()) - expected) < 1e-5


def test_open_rgb_returns_a_loaded_rgb_image(tmp_path):
    path = save(tmp_path / "c.png", Image.new("RGB", (3, 2), (1, 2, 3)))
    image = open_rgb(path)
    assert image.mode == "RGB" and image.getpixel((2, 1)) == (1, 2, 3)


def test_label_readers_stay_index_exact_and_refuse_other_modes_by_name(tmp_path):
    label = np.array([[0, 5, 255], [20, 1, 3]])
    write_label(tmp_path / "p.png", label, palette=True)
    assert np.array_equal(read_label(tmp_path / "p.png"), label)  # palette indices, not colours
    Image.fromarray(label.astype(np.uint16)).save(tmp_path / "i16.png")
    assert np.array_equal(read_label(tmp_path / "i16.png"), label)
    for mode, name in (("RGB", "rgb.png"), ("LA", "la.png"), ("RGBA", "rgba.png"), ("1", "one.png")):
        Image.new(mode, (3, 2)).save(tmp_path / name)
        with pytest.raises(DatasetError, match=rf"{name}.*mode '{mode}'"):
            read_label(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"bad\.png"):
        read_label(tmp_path / "bad.png")


def test_a_16_bit_image_in_a_dataset_reads_as_grey_not_white(tmp_path):
    folder = make_voc(tmp_path)
    path = folder / "JPEGImages" / "2007_000033.jpg"
    height, width = np.asarray(Image.open(path)).shape[:2]
    values = np.full((height, width), 30000, dtype=np.uint16)
    Image.fromarray(values).save(path, format="PNG")  # a 16-bit PNG under a .jpg name, as found in the wild
    sample = DATASETS.get("voc21")(tmp_path)[0]
    assert sample.id == "2007_000033" and (sample.image == 30000 // 256).all()
