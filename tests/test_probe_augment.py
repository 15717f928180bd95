"""The full-mode training augmentations (mmseg / depth-toolbox semantics, no OpenCV)."""

from __future__ import annotations

import numpy as np

from phreg_bench.geometry import rescale_size
from phreg_bench.probes.augment import (
    depth_train_augment,
    hsv8_to_rgb,
    random_crop,
    rgb_to_hsv8,
    rotate,
    seg_train_augment,
)


def test_hsv8_matches_opencv_conventions_and_round_trips():
    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]], dtype=np.uint8)
    hsv = rgb_to_hsv8(primaries)
    assert hsv[0].tolist() == [[0, 255, 255], [60, 255, 255], [120, 255, 255], [0, 0, 128]]  # H in 0..179
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    back = hsv8_to_rgb(rgb_to_hsv8(pixels)).astype(int)
    assert np.abs(back - pixels).max() <= 4  # 8-bit quantisation of H and S, as in OpenCV


def test_rescale_size_is_mmcv_keep_ratio():
    assert rescale_size(375, 500, 518, 2048) == (518, 691)
    assert rescale_size(100, 1000, 518, 2048) == (205, 2048)  # long side capped at 2048


def test_random_crop_prefers_crops_with_more_than_one_dominant_class():
    label = np.zeros((64, 64), dtype=np.int64)
    label[:, 48:] = 1
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, crop = random_crop(np.zeros((64, 64, 3), np.uint8), label, rng, crop=(32, 32), cat_max_ratio=0.75)
        counts = np.bincount(crop.ravel(), minlength=2)
        assert counts.max() / counts.sum() < 0.75  # always found within 10 tries here


def test_seg_pipeline_shapes_and_label_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    label = rng.integers(0, 3, size=(40, 60)).astype(np.int64)
    out_image, out_label = seg_train_augment(image, label, rng, 48)
    assert out_image.shape == (48, 48, 3) and out_image.dtype == np.uint8
    assert out_label.shape == (48, 48)
    assert set(np.unique(out_label)) <= {0, 1, 2, 255}


def test_rotation_direction_and_depth_pipeline():
    grid = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_array_equal(rotate(grid, 0.0, "nearest"), grid)
    np.testing.assert_array_equal(rotate(grid, 90.0, "nearest"), np.rot90(grid))  # counter-clockwise, as cv2
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 64, 3)).astype(np.uint8)
    depth = rng.uniform(1, 9, size=(48, 64)).astype(np.float32)
    out_image, out_depth = depth_train_augment(image, depth, rng, (40, 56), (4, 47, 4, 61))
    assert out_image.shape == (40, 56, 3) and out_depth.shape == (40, 56)
    assert out_image.min() >= 0 and out_image.max() <= 255
