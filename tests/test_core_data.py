"""Training data: recursive image folders, resize + random square crop, corrupt files, HF-style datasets."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_core_fixtures import one_thread  # noqa: F401

from phreg_core.data import HFImageDataset, ImageFolderDataset, TensorImageDataset, collate, list_images
from phreg_core.recipe import Recipe, RunOptions
from phreg_core.student import Student
from phreg_core.teacher import default_teacher
from phreg_core.trainer import distill

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def make_folder(root, corrupt: bool = True):
    (root / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (48, 32), (255, 0, 0)).save(root / "one.jpg")
    Image.new("RGBA", (32, 80), (0, 255, 0, 255)).save(root / "a" / "two.PNG")
    Image.new("L", (40, 40), 128).save(root / "a" / "b" / "three.webp")
    (root / "notes.txt").write_text("not an image")
    if corrupt:
        (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def test_list_images_is_recursive_and_case_insensitive(tmp_path):
    files = list_images(make_folder(tmp_path))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a/b/three.webp", "a/broken.jpg", "a/two.PNG", "one.jpg"]
    with pytest.raises(FileNotFoundError, match="--data"):
        list_images(tmp_path / "missing")


def test_short_side_resize_and_random_square_crop(tmp_path):
    make_folder(tmp_path, corrupt=False)
    data = ImageFolderDataset(tmp_path, 16, MEAN, STD, seed=0)
    for i in range(len(data)):
        item = data[i]
        assert item["image"].shape == (3, 16, 16) and item["index"] == i
    red = data[[f.name for f in data.files].index("one.jpg")]["image"]
    assert torch.allclose(red[0], torch.full((16, 16), (1 - 0.5) / 0.25), atol=0.05)  # normalised red
    assert torch.allclose(red[1], torch.full((16, 16), (0 - 0.5) / 0.25), atol=0.05)


def test_crops_depend_on_seed_epoch_index_and_fixed_crops_freeze_them(tmp_path):
    gradient = torch.linspace(0, 255, 200).to(torch.uint8).view(1, 200, 1).expand(3, 200, 1).expand(3, 200, 20)
    Image.fromarray(gradient.permute(1, 2, 0).numpy()).save(tmp_path / "tall.png")  # long vertical edge
    data = ImageFolderDataset(tmp_path, 20, MEAN, STD, seed=0)
    crops = []
    for epoch in range(6):
        data.set_epoch(epoch)
        crops.append(data[0]["image"])
    assert torch.equal(crops[0], ImageFolderDataset(tmp_path, 20, MEAN, STD, seed=0)[0]["image"])
    assert len({round(float(c.mean()), 4) for c in crops}) > 1  # the crop moves along the long side
    fixed = ImageFolderDataset(tmp_path, 20, MEAN, STD, seed=0, fixed_crops=True)
    first = fixed[0]["image"]
    fixed.set_epoch(3)
    assert torch.equal(first, fixed[0]["image"])


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    make_folder(tmp_path)
    data = ImageFolderDataset(tmp_path, 16, MEAN, STD)
    with pytest.warns(UserWarning, match="broken.jpg"):
        batch = collate([data[i] for i in range(len(data))])
    assert len(batch) == 3 and batch.corrupt == 1 and batch.images.shape == (3, 3, 16, 16)


def test_distill_counts_corrupt_files(tmp_path):
    from test_core_fixtures import tiny_timm

    make_folder(tmp_path / "data")
    base = tiny_timm()
    data = ImageFolderDataset(tmp_path / "data", 32, base.mean, base.std)
    with pytest.warns(UserWarning):
        result = distill(default_teacher(base), Student(base, 2), data,
                         Recipe(epochs=1, batch_size=2, views=2), RunOptions(progress=False))
    assert result.corrupt_images == 1 and result.images_seen == 3 and result.steps == 2


def test_hf_style_dataset_of_dicts():
    rows = [{"image": Image.new("RGB", (30, 20), (0, 0, 255))}, {"image": b"garbage"}]
    data = HFImageDataset(rows, 16, MEAN, STD)
    assert data[0]["image"].shape == (3, 16, 16)
    with pytest.warns(UserWarning):
        assert data[1] is None


def test_tensor_dataset_items():
    images = torch.randn(3, 3, 8, 8)
    data = TensorImageDataset(images)
    assert len(data) == 3 and torch.equal(data[2]["image"], images[2]) and data[2]["index"] == 2
