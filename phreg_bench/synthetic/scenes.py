"""A deterministic procedural world with known truth: images, semantic labels and metric depth.

Every scene is a yard seen by a pinhole camera: the sky and a far wall above the horizon (both smooth,
low-information: a faint gradient with a barely visible grain), a textured ground plane whose depth
follows the image row up to the wall, and several objects standing on the ground. Each object has a class
(shape + saturated colour + texture; two classes are plain), one depth (where it touches the ground) and
a size that shrinks with depth; objects are painted far to near, so occlusion always agrees with depth.
Background colours are desaturated, and a little atmospheric fog makes far things paler, so depth is
visible in the pixels as well as in the geometry.

Scenes are functions of ``(index, seed)`` only; ``size`` is the sampling resolution of one continuous
scene (shapes and textures live in [0, 1]² coordinates), so the same scene can be rendered at 32 px for
tests and 448 px for real backbones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from phreg_core.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

CLASS_NAMES = ("ground", "wall", "sky", "disc", "box", "triangle", "ring", "cross", "diamond")
NUM_CLASSES = len(CLASS_NAMES)
GROUND, WALL, SKY = 0, 1, 2
FIRST_OBJECT = 3

# Base colour (RGB, 0..255) of each object class (saturated hues; the background is desaturated).
_OBJECT_RGB = {
    "disc": (215, 60, 50),  # red
    "box": (60, 170, 70),  # green
    "triangle": (55, 90, 215),  # blue
    "ring": (225, 190, 40),  # yellow
    "cross": (170, 70, 190),  # purple
    "diamond": (40, 190, 200),  # cyan
}
# Texture of each object class: (kind, frequency in cycles per object radius). Plain ones are low-information.
_OBJECT_TEXTURE = {"disc": ("stripes", 3.0), "box": ("plain", 0.0), "triangle": ("dots", 3.0),
                   "ring": ("plain", 0.0), "cross": ("stripes-v", 2.5), "diamond": ("noise", 4.0)}

DEPTH_NEAR = 1.0  # metres: nearest ground row / object (inside NYUv2's 0.001-10 m evaluation range)
DEPTH_FAR = 9.5  # metres: the sky (a far backdrop)
DEPTH_WALL = 8.0  # metres: the far wall standing on the horizon
_FOG_RGB = np.array([200, 205, 215], dtype=np.float32)


@dataclass
class Scene:
    """One rendered sample. ``labels`` index :data:`CLASS_NAMES`; ``depth`` is in metres."""

    image: np.ndarray  # uint8 [H, W, 3]
    labels: np.ndarray  # int64 [H, W]
    depth: np.ndarray  # float32 [H, W]


def _value_noise(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1] on [0, 1]² coordinates: a random ``cells``² lattice, bilinearly sampled."""
    lattice = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    fy, fx = ys * cells, xs * cells
    y0 = np.clip(np.floor(fy).astype(int), 0, cells - 1)
    x0 = np.clip(np.floor(fx).astype(int), 0, cells - 1)
    ty, tx = fy - y0, fx - x0
    ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep keeps the noise C1
    top = lattice[y0, x0] * (1 - tx) + lattice[y0, x0 + 1] * tx
    bottom = lattice[y0 + 1, x0] * (1 - tx) + lattice[y0 + 1, x0 + 1] * tx
    return top * (1 - ty) + bottom * ty


def _shape_mask(name: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    """Pixels inside an object of class ``name`` centred at offsets (dy, dx) (normalised units)."""
    u, v = dx / radius, dy / radius
    if name == "disc":
        return u * u + v * v <= 1.0
    if name == "box":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if name == "triangle":  # apex up, base on the ground line
        return (v <= 0.9) & (v >= -0.9) & (np.abs(u) <= (v + 0.9) / 1.8)
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.35)
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    raise ConfigError(f"unknown object class {name!r}")


def _texture(kind: str, dy: np.ndarray, dx: np.ndarray, radius: float, phase: float,
             rng: np.random.Generator) -> np.ndarray:
    """Brightness modulation in [-1, 1] of an object's surface."""
    name, freq = _OBJECT_TEXTURE[kind]
    u, v = dx / radius, dy / radius
    if name == "plain":
        return np.zeros_like(u)
    if name == "stripes":
        return np.sign(np.sin(np.pi * freq * (u + v) + phase))
    if name == "stripes-v":
        return np.sign(np.sin(np.pi * freq * u + phase))
    if name == "checker":
        return np.sign(np.sin(np.pi * freq * u + phase) * np.sin(np.pi * freq * v + phase))
    if name == "dots":
        return np.where(np.sin(np.pi * freq * u + phase) * np.sin(np.pi * freq * v) > 0.5, 1.0, -0.4)
    return _value_noise(rng, (v + 1) / 2, (u + 1) / 2, int(freq * 2))


@dataclass(frozen=True)
class SceneObject:
    """One object: class id, depth (metres), centre and radius in [0, 1] units, colour and texture."""

    kind: int
    depth: float
    cx: float
    cy: float
    radius: float
    colour: np.ndarray
    phase: float = 0.0
    texture_seed: int = 0


def paint_objects(image: np.ndarray, labels: np.ndarray, depth: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                  objects: list[SceneObject]) -> np.ndarray:
    """Paint objects far to near (painter's algorithm), so the nearest object wins every pixel.

    ``labels`` and ``depth`` are updated in place; the painted image is returned.
    """
    for obj in sorted(objects, key=lambda o: -o.depth):
        name = CLASS_NAMES[obj.kind]
        dy, dx = ys - obj.cy, xs - obj.cx
        mask = _shape_mask(name, dy, dx, obj.radius)
        if not mask.any():
            continue
        texture = _texture(name, dy, dx, obj.radius, obj.phase, np.random.default_rng(obj.texture_seed))
        shade = 1.0 - 0.25 * np.clip(dx / obj.radius, -1, 1)  # light from the left
        surface = obj.colour * (shade * (1 + 0.3 * texture))[..., None]
        image = np.where(mask[..., None], surface, image)
        labels[mask] = obj.kind
        depth[mask] = obj.depth
    return image


def render(index: int, size: int = 64, seed: int = 0) -> Scene:
    """Render scene ``index`` of world ``seed`` as a ``size``×``size`` image with labels and depth."""
    if size < 8:
        raise ConfigError(f"scene size {size} is too small; use at least 8 pixels")
    rng = np.random.default_rng([int(seed), int(index)])
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    ys, xs = np.meshgrid(coords, coords, indexing="ij")

    # Camera: horizon row and the ground-plane depth law d(y) = k / (y - horizon), clipped.
    horizon = float(rng.uniform(0.35, 0.6))
    k = DEPTH_NEAR * (1.0 - horizon)  # depth DEPTH_NEAR at the bottom row
    below = ys > horizon
    ground_depth = np.where(below, k / np.maximum(ys - horizon, 1e-6), DEPTH_FAR)
    # the ground ends at the wall; the sky is the far backdrop (the wall region is set below)
    depth = np.where(below, np.minimum(ground_depth, DEPTH_WALL), DEPTH_FAR).astype(np.float32)
    labels = np.zeros((size, size), dtype=np.int64)

    # Above the horizon: a far wall, and the sky above its top edge. Both are smooth (a faint gradient and
    # a barely visible grain): the low-information regions where artifacts appear in real ViTs.
    # Background colours are desaturated (a grey plus a small tint); objects carry the saturated hues.
    skyline = horizon * float(rng.uniform(0.35, 0.7))
    sky_top = np.clip(rng.uniform(170, 235) + np.array([-10, 0, 12]) + rng.uniform(-8, 8, size=3), 0, 255)
    sky_bottom = np.clip(sky_top + rng.uniform(5, 20), 0, 255)
    t = np.clip(ys / max(skyline, 1e-3), 0, 1)[..., None]
    sky = sky_top * (1 - t) + sky_bottom * t
    wall_rgb = np.clip(rng.uniform(100, 190) + np.array([8, 0, -10]) + rng.uniform(-10, 10, size=3), 0, 255)
    wall = wall_rgb - 20 * ((ys - skyline) / max(horizon - skyline, 1e-3))[..., None]
    is_sky = ys <= skyline
    image = np.where(is_sky[..., None], sky, wall).astype(np.float32)
    image = image + 1.5 * _value_noise(rng, ys, xs, 48)[..., None]
    labels[~below] = WALL
    labels[is_sky] = SKY
    depth[~below & ~is_sky] = DEPTH_WALL

    # Ground: a coloured, strongly textured plane (high information) with perspective-scaled noise.
    ground_rgb = (rng.uniform(70, 150) + rng.uniform(-15, 15, size=3)).astype(np.float32)
    cells = int(rng.integers(6, 12))
    ground_u = xs / np.maximum(ys - horizon, 0.05) * 0.25  # texture coordinates shrink with distance
    ground_v = np.log(np.maximum(ground_depth, 1e-3)) / np.log(DEPTH_FAR + 1)
    tex = _value_noise(rng, np.clip(ground_v, 0, 1), np.clip(ground_u / 4 % 1.0, 0, 1), cells)
    tex = tex + 0.5 * np.sign(np.sin(40 * ground_u + 6 * ground_v))
    ground = ground_rgb + 35 * tex[..., None]
    image = np.where(below[..., None], ground, image)

    # Objects: stand on the ground at a random row; nearer objects are bigger and drawn later.
    count = int(rng.integers(2, 6))
    objects = []
    for _ in range(count):
        base_y = float(rng.uniform(horizon + 0.06, 1.02))
        obj_depth = float(np.clip(k / (base_y - horizon), DEPTH_NEAR, DEPTH_WALL - 0.5))
        radius = float(np.clip(0.17 * (DEPTH_NEAR / obj_depth) ** 0.5 * rng.uniform(1.0, 1.6), 0.07, 0.32))
        centre_x = float(rng.uniform(0.05, 0.95))
        kind = int(rng.integers(FIRST_OBJECT, NUM_CLASSES))
        base = np.array(_OBJECT_RGB[CLASS_NAMES[kind]], dtype=np.float32)
        colour = np.clip(base + rng.normal(0, 12, size=3), 0, 255).astype(np.float32)
        phase = float(rng.uniform(0, 2 * np.pi))
        tex_seed = int(rng.integers(0, 2**31))
        objects.append(SceneObject(kind, obj_depth, centre_x, base_y - radius, radius, colour, phase, tex_seed))
    image = paint_objects(image, labels, depth, ys, xs, objects)

    # Atmospheric fog: far surfaces fade towards a pale grey.
    fog = (0.35 * (depth - DEPTH_NEAR) / (DEPTH_FAR - DEPTH_NEAR))[..., None]
    image = image * (1 - fog) + _FOG_RGB * fog
    return Scene(np.clip(np.rint(image), 0, 255).astype(np.uint8), labels, depth.astype(np.float32))


@dataclass
class SceneBatch:
    """Several rendered scenes as tensors (:func:`render_batch`)."""

    images: Tensor  # float32 [B, 3, S, S] in [0, 1] (a caller may replace them by normalised ones)
    labels: Tensor  # int64 [B, S, S], indices into CLASS_NAMES
    depth: Tensor  # float32 [B, S, S], metres


def render_batch(indices: Iterable[int], size: int = 64, seed: int = 0) -> SceneBatch:
    """The scenes ``indices`` rendered at ``size`` px: the one loader of the built-in task and the proof."""
    import torch

    scenes = [render(int(i), size, seed) for i in indices]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    return SceneBatch(images, torch.from_numpy(np.stack([s.labels for s in scenes])),
                      torch.from_numpy(np.stack([s.depth for s in scenes])))
