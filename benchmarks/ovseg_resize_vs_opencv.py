"""How close the harness's resize is to mmseg's (OpenCV ``INTER_LINEAR`` on uint8), where OpenCV is installed.

mmseg's ``Resize(keep_ratio=True)`` calls ``mmcv.imrescale`` → ``cv2.resize(..., INTER_LINEAR)`` on the
uint8 image. :func:`phreg_bench.geometry.resize_image` uses torch's half-pixel bilinear resize rounded to
integers. Prints, per case, the share of pixel values that differ and the largest difference (grey levels)::

    python benchmarks/ovseg_resize_vs_opencv.py
"""

from __future__ import annotations

import numpy as np
import torch

from phreg_bench.geometry import rescale_size, resize_image


def main() -> None:
    import cv2

    rng = np.random.default_rng(0)
    cases = [((375, 500), 448), ((500, 375), 336), ((1024, 2048), 560), ((480, 640), 448), ((512, 683), 336),
             ((281, 500), 448)]
    for (height, width), short in cases:
        smooth = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)
        for name, image in (("noise", rng.integers(0, 256, (height, width, 3), dtype=np.uint8)), ("smooth", smooth)):
            new_h, new_w = rescale_size(height, width, short)
            reference = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.int64)
            ours = resize_image(torch.from_numpy(image).permute(2, 0, 1)[None].float(), (new_h, new_w))
            ours = ours[0].permute(1, 2, 0).numpy().astype(np.int64)
            diff = np.abs(ours - reference)
            print(f"{height}x{width} -> {new_h}x{new_w} {name:6s}: {100 * (diff > 0).mean():6.3f} % of values differ, "
                  f"max {diff.max()} grey level(s), mean {diff.mean():.4f}")


if __name__ == "__main__":
    main()
