"""How far the OpenCV-free augmentation primitives are from OpenCV (run where ``cv2`` is installed).

    python benchmarks/probe_cv2_parity.py

mmcv/mmseg implement resize, HSV conversion and rotation with OpenCV; ``phreg_bench.probes.augment`` uses
PyTorch / NumPy instead. This prints the largest and mean absolute differences on random images.
"""

from __future__ import annotations

import numpy as np

from phreg_bench.geometry import resize_image_array, resize_label
from phreg_bench.probes.augment import hsv8_to_rgb, rgb_to_hsv8, rotate


def main() -> None:
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(375, 500, 3), dtype=np.uint8)
    smooth = cv2.GaussianBlur(image, (7, 7), 2)  # natural-image-like gradients
    label = rng.integers(0, 21, size=(375, 500)).astype(np.uint8)

    def report(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
        diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
        print(f"{name:<34} max |diff| {diff.max():4d}   mean {diff.mean():.4f}   exact {np.mean(diff == 0):.4f}")

    for size in ((518, 691), (259, 345), (1036, 1381)):
        ours = resize_image_array(smooth, size)
        theirs = cv2.resize(smooth, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        report(f"resize bilinear -> {size}", ours, theirs)
        report(f"resize nearest (labels) -> {size}", resize_label(label, size),
               cv2.resize(label, (size[1], size[0]), interpolation=cv2.INTER_NEAREST))
    hsv_ours = rgb_to_hsv8(smooth)
    hsv_cv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV)
    report("rgb -> hsv (8-bit)", hsv_ours, hsv_cv)
    report("hsv -> rgb (8-bit)", hsv8_to_rgb(hsv_cv), cv2.cvtColor(hsv_cv, cv2.COLOR_HSV2RGB))
    for angle in (2.5, -1.7):
        h, w = smooth.shape[:2]
        matrix = cv2.getRotationMatrix2D(((w - 1) * 0.5, (h - 1) * 0.5), angle, 1.0)  # mmcv.imrotate
        theirs = cv2.warpAffine(smooth, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        ours = np.clip(np.round(rotate(smooth.astype(np.float32), angle, "bilinear")), 0, 255)
        inner = (slice(10, -10), slice(10, -10))
        report(f"rotate {angle} deg (interior)", ours[inner], theirs[inner])


if __name__ == "__main__":
    main()
