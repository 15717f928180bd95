"""The project's one way to read an image file as RGB: every Pillow mode handled explicitly, or refused by name.

Every RGB input of the project (dataset readers, ``viz``, the distillation image folder and Hugging Face
rows) goes through :func:`to_rgb` / :func:`open_rgb` / :func:`read_rgb`. Label maps are *not* read here:
they must stay index-exact (palette indices, not colours) and have their own reader
(``phreg_bench.datasets.base.read_label``), which uses :func:`open_image` for the same file errors.

Rules, per Pillow mode (https://pillow.readthedocs.io/en/stable/handbook/concepts.html#modes):

* ``RGB`` — unchanged.
* ``1``, ``L`` — grey replicated to three channels (``1``: 0 / 255).
* ``P`` — the palette colours (a transparent palette index keeps its colour: alpha dropped, see below).
* ``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, ``RGBX`` — **alpha dropped**: the stored colour channels are
  kept as they are, with no compositing on a background (premultiplied ``La``/``RGBa`` are un-premultiplied
  first). This is what ``PIL.Image.convert("RGB")`` and OpenCV's ``imread(IMREAD_COLOR)`` (mmcv's
  ``imread``, used by every reference harness) do, so the numbers match the reference code.
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` — Pillow's built-in conversion to RGB (no ICC colour management).
* ``I;16``, ``I;16L``, ``I;16B``, ``I;16N`` (16-bit greyscale) — scaled by the bit depth, keeping the high
  byte: ``v >> 8`` (0..65535 → 0..255), as libpng's ``png_set_strip_16`` does when decoders reduce 16-bit
  PNGs to 8 bits. (Pillow's own ``convert("RGB")`` clips these to 255, i.e. white.)
* ``I`` (32-bit signed integer) — greyscale of a known bit depth: 16 for PNG (Pillow reads 16-bit greyscale
  PNGs as ``I`` in some versions), else the TIFF ``BitsPerSample`` tag; scaled by ``2**(bits - 8)`` like
  16-bit. Values outside ``0 .. 2**bits - 1`` or an unknown bit depth are refused by name.
* ``F`` (32-bit float) — greyscale in ``[0, 1]``, scaled by 255 and rounded; any value outside ``[0, 1]``
  (or NaN) is refused by name, since a float image has no defined white level.
* anything else — refused by name.

Errors: a missing, truncated or corrupt file, Pillow's ``DecompressionBombError`` (more than
``2 * Image.MAX_IMAGE_PIXELS`` pixels) and refused modes all raise :class:`ImageReadError`, one line that
names the file and the fix. EXIF orientation is not applied (labels are stored unrotated, and the reference
harnesses do not apply it either).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from phreg_core.errors import PhregError

__all__ = ["ImageReadError", "PILLOW_CONVERTED", "open_image", "open_rgb", "read_rgb", "to_rgb"]

# Modes whose RGB conversion is Pillow's own (colour channels kept, alpha dropped, colour spaces converted).
PILLOW_CONVERTED = ("RGB", "1", "L", "P", "LA", "La", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
HIGH_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N")
TIFF_BITS_PER_SAMPLE = 258  # TIFF tag number [TIFF 6.0 specification, section 8]


class ImageReadError(PhregError, ValueError):
    """An image file that cannot be read as RGB; the message names the file, the reason and the fix."""


def _name(source: str | os.PathLike) -> str:
    return str(source)


@contextmanager
def open_image(path, name: str | None = None) -> Iterator:
    """``PIL.Image.open`` of ``path`` (a path or a binary file object) with every read failure turned into
    one :class:`ImageReadError` line naming ``name`` (default: the path).

    Covers a missing file, an unidentifiable or truncated file and a decompression bomb, raised at open or
    at any access inside the ``with`` block (Pillow decodes lazily).
    """
    from PIL import Image

    label = name or _name(path)

    try:
        with Image.open(path) as image:
            yield image
    except PhregError:  # the project's own errors raised inside the block pass through
        raise
    except FileNotFoundError as error:
        raise ImageReadError(f"image {label} is missing") from error
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"image {label} is refused as a possible decompression bomb ({error}); if the "
                             "file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS, else remove it") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:  # UnidentifiedImageError is an OSError
        raise ImageReadError(f"image {label} cannot be read ({error}); the file is truncated or corrupt: "
                             "re-download or remove it") from error


def _bit_depth_of_i(image, source: str) -> int:
    """The bit depth of a mode-``I`` image: 16 for PNG, the TIFF BitsPerSample tag, else refused."""
    if image.format == "PNG":
        return 16
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(TIFF_BITS_PER_SAMPLE) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    if bits is None or not 8 <= int(bits) <= 32:
        raise ImageReadError(f"image {source} is a 32-bit integer greyscale image (Pillow mode 'I') of unknown bit "
                             "depth; no grey scale is defined for it. Convert it to an 8-bit RGB or greyscale image")
    return int(bits)


def _grey_to_rgb(grey: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2), mode="RGB")


def to_rgb(image, source: str | os.PathLike = "<image>"):
    """An RGB ``PIL.Image`` from any Pillow image, by the rules of the module docstring.

    ``source`` names the image in errors (a path, or ``"row #3"``). Raises :class:`ImageReadError` for a
    refused mode or value range, or a file that turns out truncated when its pixels are decoded.
    """
    source = _name(source)
    mode = image.mode
    try:
        if mode == "RGB":
            image.load()
            return image
        if mode in ("La", "RGBa"):
            return image.convert("RGBA" if mode == "RGBa" else "LA").convert("RGB")
        if mode in PILLOW_CONVERTED:
            return image.convert("RGB")
        if mode in HIGH_BIT_GREY:
            values = np.asarray(image).astype(np.uint16)
            return _grey_to_rgb(values >> 8)
        if mode == "I":
            bits = _bit_depth_of_i(image, source)
            values = np.asarray(image, dtype=np.int64)
            if values.size and (values.min() < 0 or values.max() >= 2**bits):
                raise ImageReadError(f"image {source} is {bits}-bit integer greyscale but holds values "
                                     f"{int(values.min())}..{int(values.max())} outside 0..{2**bits - 1}; "
                                     "convert it to an 8-bit RGB or greyscale image")
            return _grey_to_rgb(values >> (bits - 8) if bits > 8 else values)
        if mode == "F":
            values = np.asarray(image, dtype=np.float64)
            if values.size and not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
                low, high = np.nanmin(values), np.nanmax(values)
                raise ImageReadError(f"image {source} is 32-bit float greyscale with values {low:g}..{high:g} "
                                     "(or NaN/Inf); only floats in [0, 1] have a defined grey scale. Convert it "
                                     "to an 8-bit RGB or greyscale image")
            return _grey_to_rgb(np.rint(values * 255.0))
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise ImageReadError(f"image {source} cannot be decoded ({error}); the file is truncated or corrupt: "
                             "re-download or remove it") from error
    raise ImageReadError(f"image {source} has Pillow mode {mode!r}, which is not read as RGB; convert it to an "
                         "8-bit RGB image")


def open_rgb(path, name: str | None = None):
    """The RGB ``PIL.Image`` of ``path`` (a path or a binary file object; decoded, file closed).

    ``name`` names the image in errors (default: the path). Raises :class:`ImageReadError`.
    """
    with open_image(path, name) as image:
        rgb = to_rgb(image, name or path)
        if rgb is image:
            rgb = image.copy()
    return rgb


def read_rgb(path: str | os.PathLike | Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB pixels of the file at ``path``. Raises :class:`ImageReadError`."""
    with open_image(path) as image:
        return np.array(to_rgb(image, path), dtype=np.uint8)
