"""The procedural world: deterministic, well-formed, and its labels and depth agree with what is drawn."""

from __future__ import annotations

import numpy as np
import pytest

from phreg_bench.synthetic.scenes import (
    CLASS_NAMES,
    DEPTH_FAR,
    DEPTH_NEAR,
    DEPTH_WALL,
    FIRST_OBJECT,
    GROUND,
    SKY,
    WALL,
    SceneObject,
    paint_objects,
    render,
)


def test_render_is_deterministic_and_well_formed():
    a, b = render(7, 48, seed=3), render(7, 48, seed=3)
    for x, y in ((a.image, b.image), (a.labels, b.labels), (a.depth, b.depth)):
        np.testing.assert_array_equal(x, y)
    assert a.image.shape == (48, 48, 3) and a.image.dtype == np.uint8
    assert a.labels.shape == (48, 48) and a.labels.dtype == np.int64
    assert a.depth.shape == (48, 48) and a.depth.dtype == np.float32
    assert a.labels.min() >= 0 and a.labels.max() < len(CLASS_NAMES)
    assert a.depth.min() >= DEPTH_NEAR and a.depth.max() <= DEPTH_FAR
    other = render(8, 48, seed=3)
    assert not np.array_equal(a.image, other.image)
    assert not np.array_equal(a.image, render(7, 48, seed=4).image)


def test_scenes_have_every_region_and_objects():
    seen = set()
    for index in range(20):
        scene = render(index, 40)
        present = set(np.unique(scene.labels).tolist())
        assert {GROUND, WALL, SKY} <= present
        assert any(c >= FIRST_OBJECT for c in present), f"scene {index} has no visible object"
        seen |= present
    assert seen == set(range(len(CLASS_NAMES)))


def test_depth_follows_the_geometry():
    for index in range(10):
        scene = render(index, 64)
        labels, depth = scene.labels, scene.depth
        np.testing.assert_allclose(depth[labels == SKY], DEPTH_FAR)
        np.testing.assert_allclose(depth[labels == WALL], DEPTH_WALL)
        is_ground = labels == GROUND
        assert np.all(depth[is_ground] <= DEPTH_WALL + 1e-5)  # the ground ends at the wall
        # ground depth never increases from one row to the next one down (a plane seen from above)
        rows = [depth[r][is_ground[r]].mean() for r in range(len(depth)) if is_ground[r].any()]
        assert np.all(np.diff(rows) <= 1e-4)
        objects = labels >= FIRST_OBJECT
        assert np.all(depth[objects] < DEPTH_WALL)  # objects stand in front of the wall


def test_occlusion_agrees_with_depth_whatever_the_drawing_order():
    size = 32
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    red, blue = np.array([200, 0, 0], np.float32), np.array([0, 0, 200], np.float32)
    near = SceneObject(kind=FIRST_OBJECT, depth=2.0, cx=0.45, cy=0.5, radius=0.25, colour=red)
    far = SceneObject(kind=FIRST_OBJECT + 1, depth=5.0, cx=0.6, cy=0.5, radius=0.25, colour=blue)
    results = []
    for order in ([near, far], [far, near]):
        labels = np.zeros((size, size), np.int64)
        depth = np.full((size, size), DEPTH_FAR, np.float32)
        image = paint_objects(np.zeros((size, size, 3), np.float32), labels, depth, ys, xs, order)
        results.append((image, labels, depth))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    labels, depth = results[0][1], results[0][2]
    overlap = ((xs - 0.45) ** 2 + (ys - 0.5) ** 2 <= 0.25**2) & (np.abs(xs - 0.6) <= 0.85 * 0.25) & (
        np.abs(ys - 0.5) <= 0.85 * 0.25)
    assert overlap.sum() > 10
    assert np.all(labels[overlap] == near.kind) and np.all(depth[overlap] == near.depth)
    assert np.any(labels == far.kind)  # the far object is still visible outside the overlap


@pytest.mark.parametrize("size", [16, 40, 96])
def test_one_scene_at_any_resolution(size):
    small, large = render(3, size), render(3, 2 * size)
    # the same continuous scene: labels at the coarse grid agree with the fine render almost everywhere
    coarse = large.labels[1::2, 1::2]
    assert (coarse == small.labels).mean() > 0.9


def test_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        render(0, 4)
