"""Generated datasets in the real on-disk layouts, with structure a linear probe can learn.

* VOC (``VOCdevkit/VOC2012``) and ADE20K (``ade/ADEChallengeData2016``): colour-coded rectangles on a noisy
  grey background; each class has its own colour, so the class of a patch is visible in its pixels.
* NYUv2: ``nyu_depth_v2/nyu_depth_v2_labeled.mat`` written as MATLAB v7.3 (HDF5 with the 512-byte MATLAB
  user block) in the real variable layout (``images`` uint8 ``[N, 3, W, H]``, ``depths`` / ``rawDepths`` float32
  ``[N, W, H]``, i.e. MATLAB's ``[H, W, 3, N]`` / ``[H, W, N]`` transposed), ``splits.mat`` (MATLAB v5, 1-based
  ``trainNdxs`` / ``testNdxs`` column vectors, as the official file), and optionally the BTS "sync" layout
  (RGB JPEG + uint16 millimetre PNG, ``nyu_train.txt`` / ``nyu_test.txt``). Depth is a planar ramp drawn
  into the image as a colour gradient (near = warm, far = blue), so it follows a visible gradient.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# class colours (RGB); index = class id after any reduce_zero_label
COLOURS = np.array([[128, 128, 128], [220, 40, 40], [40, 200, 60], [50, 70, 230], [230, 220, 40]], dtype=np.float32)
NEAR, FAR = np.array([250.0, 200.0, 60.0]), np.array([20.0, 40.0, 160.0])  # depth colour ramp
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128] + [0] * (768 - 15)


def scene(rng: np.random.Generator, height: int, width: int, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its class map: 1-3 coloured rectangles (classes 1..classes) on class-0 background."""
    image = COLOURS[0] + rng.normal(0, 12, size=(height, width, 3))
    label = np.zeros((height, width), dtype=np.uint8)
    for cls in rng.permutation(np.arange(1, classes + 1))[: rng.integers(1, 4)]:
        h, w = rng.integers(height // 3, height // 2 + 1), rng.integers(width // 4, width // 2 + 1)
        y, x = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        image[y : y + h, x : x + w] = COLOURS[cls] + rng.normal(0, 12, size=(h, w, 3))
        label[y : y + h, x : x + w] = cls
    return np.clip(image, 0, 255).astype(np.uint8), label


def _save_label(path: Path, label: np.ndarray, palette: bool) -> None:
    image = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette:
        image = image.convert("P")
        image.putpalette(VOC_PALETTE)
    image.save(path)


def write_voc(root: Path, n_train: int = 12, n_val: int = 6, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    """``root/VOCdevkit/VOC2012`` with train, val and train_aug (SegmentationClassAug + aug.txt) splits."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = {"train": [f"2007_{i:06d}" for i in range(n_train)], "val": [f"2008_{i:06d}" for i in range(n_val)]}
    for split, names in ids.items():
        for name in names:
            image, label = scene(rng, *size)
            label[0, :] = 255  # a VOC-style boundary line (ignored)
            Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
            _save_label(base / "SegmentationClass" / f"{name}.png", label, palette=True)
            if split == "train":
                _save_label(base / "SegmentationClassAug" / f"{name}.png", label, palette=False)
        (base / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (base / "ImageSets/Segmentation/aug.txt").write_text("\n".join(ids["train"]) + "\n")
    return base


def write_ade(root: Path, n_train: int = 12, n_val: int = 6, size: tuple[int, int] = (48, 64), seed: int = 1) -> Path:
    """``root/ade/ADEChallengeData2016``; raw labels 1..4 (classes 0..3 after reduce_zero_label), 0 = other."""
    base = root / "ade" / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    for split, count in (("training", n_train), ("validation", n_val)):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = scene(rng, *size, classes=3)
            raw = label + 1
            raw[-1, :] = 0  # "other" -> ignored by reduce_zero_label
            name = f"ADE_{split[:5]}_{i:08d}"
            Image.fromarray(image).save(base / "images" / split / f"{name}.jpg", quality=95)
            _save_label(base / "annotations" / split / f"{name}.png", raw, palette=False)
    return base


def depth_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A planar depth ramp (metres) drawn as a visible colour gradient (near = warm and bright, far = blue)."""
    a, b = rng.uniform(1.0, 3.0), rng.uniform(2.0, 6.0)
    ramp = np.linspace(0, 1, height)[:, None] if rng.integers(2) else np.linspace(0, 1, width)[None, :]
    depth = (a + b * np.broadcast_to(ramp, (height, width))).astype(np.float32)
    t = ((depth - 1.0) / 8.0)[..., None]
    image = (1 - t) * NEAR + t * FAR + rng.normal(0, 4, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), depth


def write_nyu(root: Path, n_train: int = 24, n_test: int = 8, size: tuple[int, int] = (48, 64), seed: int = 2,
              sync: bool = False) -> Path:
    """``root/nyu_depth_v2`` with the labeled ``.mat`` + ``splits.mat`` (and the sync layout if ``sync``)."""
    import h5py
    from scipy.io import savemat

    base = root / "nyu_depth_v2"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = n_train + n_test
    height, width = size
    images = np.zeros((total, 3, width, height), dtype=np.uint8)
    depths = np.zeros((total, width, height), dtype=np.float32)
    raw_depths = np.zeros_like(depths)
    frames = []
    for i in range(total):
        image, depth = depth_scene(rng, height, width)
        raw = depth.copy()
        holes = rng.random(size) < 0.05
        raw[holes] = 0.0  # Kinect holes: no measurement
        images[i] = image.transpose(2, 1, 0)  # [H, W, 3] -> MATLAB-on-disk [3, W, H]
        depths[i], raw_depths[i] = depth.T, raw.T
        frames.append((image, raw))
    mat = base / "nyu_depth_v2_labeled.mat"
    with h5py.File(mat, "w", userblock_size=512) as file:
        file.create_dataset("images", data=images)
        file.create_dataset("depths", data=depths)
        file.create_dataset("rawDepths", data=raw_depths)
    with open(mat, "r+b") as stream:  # MATLAB v7.3 header in the user block
        stream.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: fixture HDF5 schema 1.00 .".ljust(116))
        stream.write(b"\x00" * 8 + b"\x00\x02" + b"IM")
    order = rng.permutation(total) + 1  # 1-based, interleaved like the official split
    savemat(base / "splits.mat", {"trainNdxs": np.sort(order[:n_train]).astype(np.float64)[:, None],
                                  "testNdxs": np.sort(order[n_train:]).astype(np.float64)[:, None]})
    if sync:
        for split, indices in (("train", np.sort(order[:n_train]) - 1), ("test", np.sort(order[n_train:]) - 1)):
            lines = []
            for i in indices:
                folder = base / ("sync" if split == "train" else "official_splits/test") / "kitchen"
                folder.mkdir(parents=True, exist_ok=True)
                image, raw = frames[i]
                framed = np.zeros_like(image)
                framed[1:-1, 1:-1] = image[1:-1, 1:-1]
                Image.fromarray(framed).save(folder / f"rgb_{i:05d}.jpg", quality=95)
                Image.fromarray((raw * 1000).astype(np.uint16)).save(folder / f"sync_depth_{i:05d}.png")
                lines.append(f"/kitchen/rgb_{i:05d}.jpg /kitchen/sync_depth_{i:05d}.png 518.8579")
            (base / f"nyu_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_all(root: Path) -> Path:
    write_voc(root)
    write_ade(root)
    write_nyu(root)
    return root


# Protocol overrides that fit the 48x64 fixtures and a patch-8 backbone (the rest is the paper protocol).
SEG_OVERRIDES = {"input_size": 48, "slide_stride": 32, "iters": 150}
DEPTH_OVERRIDES = {"train_crop": [40, 56], "iters": 150, "warmup_iters": 15, "batch_size": 8}


@pytest.fixture
def single_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads make every small op wait on the other."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
