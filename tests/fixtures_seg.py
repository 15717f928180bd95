"""Fixture generators: each dataset's exact on-disk layout with a handful of tiny images, and a tiny
random-init open_clip CLIP wrapped as a :class:`Backbone` with a text tower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_core.towers import OpenClipTokenViT

SIZES = [(40, 52), (48, 36), (33, 45)]  # (H, W): not multiples of the patch size on purpose


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_rgb(path: Path, height: int, width: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **({"quality": 95} if path.suffix == ".jpg" else {}))


def write_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8))  # mode "L"
    if palette:  # VOC masks are palette PNGs: the pixel values are the class indices
        image = Image.frombytes("P", image.size, image.tobytes())
        image.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
    image.save(path)


def random_label(height: int, width: int, values: list[int], rng: np.random.Generator) -> np.ndarray:
    """Blocky labels (a few regions) drawn from ``values``."""
    coarse = rng.choice(values, size=(max(1, height // 8) + 1, max(1, width // 8) + 1))
    return np.kron(coarse, np.ones((8, 8), dtype=np.int64))[:height, :width]


def make_voc(root: Path, seed: int = 0) -> Path:
    folder = root / "VOCdevkit" / "VOC2012"
    rng = _rng(seed)
    ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2007_000042", "2007_000061"]}
    for names in ids.values():
        for name, (h, w) in zip(names, SIZES, strict=False):
            write_rgb(folder / "JPEGImages" / f"{name}.jpg", h, w, rng)
            label = random_label(h, w, list(range(21)), rng)
            label[0, :] = 255  # VOC's boundary "void" value
            write_label(folder / "SegmentationClass" / f"{name}.png", label, palette=True)
            write_label(folder / "SegmentationClassAug" / f"{name}.png", label)
    lists = folder / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(ids["train"]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids["val"]) + "\n")
    (lists / "trainval.txt").write_text("\n".join(ids["train"] + ids["val"]) + "\n")
    (lists / "aug.txt").write_text("\n".join(ids["train"]) + "\n")
    return folder


def make_context(root: Path, seed: int = 1) -> Path:
    folder = root / "VOCdevkit" / "VOC2010"
    rng = _rng(seed)
    names = ["2008_000002", "2008_000003", "2008_000007"]
    for name, (h, w) in zip(names, SIZES, strict=True):
        write_rgb(folder / "JPEGImages" / f"{name}.jpg", h, w, rng)
        write_label(folder / "SegmentationClassContext" / f"{name}.png", random_label(h, w, list(range(60)), rng))
    lists = folder / "ImageSets" / "SegmentationContext"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "val.txt").write_text("\n".join(names) + "\n")
    (lists / "train.txt").write_text(names[0] + "\n")
    return folder


def make_coco(root: Path, seed: int = 2, convert: bool = True) -> Path:
    """Raw stuffthingmaps PNGs (COCO ids incl. 255); ``convert`` also writes the train-id files."""
    from phreg_bench.datasets.coco import STUFF_RAW_IDS, convert_coco

    folder = root / "coco_stuff164k"
    rng = _rng(seed)
    for split, count in (("val2017", 3), ("train2017", 1)):
        for index, (h, w) in enumerate(SIZES[:count]):
            name = f"{index + 139 + (0 if split == 'val2017' else 1000):012d}"
            write_rgb(folder / "images" / split / f"{name}.jpg", h, w, rng)
            write_label(folder / "annotations" / split / f"{name}.png",
                        random_label(h, w, [*STUFF_RAW_IDS, 255], rng))
    if convert:
        convert_coco(root, "stuff")
        convert_coco(root, "object")
    return folder


def make_cityscapes(root: Path, seed: int = 3, convert: bool = True) -> Path:
    from phreg_bench.datasets.cityscapes import convert_cityscapes

    folder = root / "cityscapes"
    rng = _rng(seed)
    items = [("val", "frankfurt", 0), ("val", "frankfurt", 1), ("val", "lindau", 0), ("train", "aachen", 0)]
    for (split, city, index), (h, w) in zip(items, [*SIZES, SIZES[0]], strict=True):
        stem = f"{city}_{index:06d}_000019"
        write_rgb(folder / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", h, w, rng)
        write_label(folder / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                    random_label(h, w, list(range(34)), rng))
    if convert:
        convert_cityscapes(root)
    return folder


def make_ade(root: Path, seed: int = 4) -> Path:
    folder = root / "ade" / "ADEChallengeData2016"
    rng = _rng(seed)
    for split, prefix, count in (("validation", "ADE_val", 3), ("training", "ADE_train", 2)):
        for index, (h, w) in enumerate(SIZES[:count]):
            name = f"{prefix}_{index + 1:08d}"
            write_rgb(folder / "images" / split / f"{name}.jpg", h, w, rng)
            write_label(folder / "annotations" / split / f"{name}.png", random_label(h, w, list(range(151)), rng))
    return folder


def make_all(root: Path) -> Path:
    make_voc(root)
    make_context(root)
    make_coco(root)
    make_cityscapes(root)
    make_ade(root)
    return root


# -- a tiny CLIP ---------------------------------------------------------------------------------------
class OpenClipTextTower(nn.Module):
    """The text tower contract (``identity``, ``encode``) over an open_clip ``CLIP``: full 77-token context."""

    def __init__(self, model: nn.Module, identity: str):
        super().__init__()
        self.model = model
        self.identity = identity
        self.calls = 0

    def encode(self, texts) -> torch.Tensor:
        import open_clip

        self.calls += 1
        tokens = open_clip.tokenize(list(texts)).to(self.model.token_embedding.weight.device)
        return self.model.encode_text(tokens)


def tiny_clip(seed: int = 0, width: int = 64, layers: int = 2, patch: int = 8, image_size: int = 32):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIP(embed_dim=32,
                     vision_cfg=CLIPVisionCfg(layers=layers, width=width, head_width=16, patch_size=patch,
                                              image_size=image_size),
                     text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1))
    return model.eval()


def tiny_clip_backbone(seed: int = 0, name: str = "tiny-clip", **kwargs) -> Backbone:
    model = tiny_clip(seed, **kwargs)
    identity = BackboneIdentity(name=name, family="open_clip", architecture="tiny-clip",
                                weights_id=f"random-init(seed={seed})", weights_sha256=None)
    return Backbone(OpenClipTokenViT(model.visual), identity,
                    OpenClipTextTower(model, f"tiny-clip-text(seed={seed})")).eval()


def tiny_clip_factory(argument: str | None = None, *, name: str = "tiny-clip", weights: str | None = None,
                      random_init: bool = True, **options) -> Backbone:
    """A registry-style backbone factory: ``--backbone fixtures_seg:tiny_clip_factory`` in CLI tests."""
    if weights:
        raise ValueError("tiny-clip has no weights files")
    return tiny_clip_backbone(int(options.pop("seed", 0)), name, **options)
