"""Cost of the ovseg harness on top of a bare forward pass (goal: under 15 %).

ViT-B/16 with random weights (the time does not depend on them), NACLIP's last block, VOC21's 56 queries
(random unit text embeddings: text encoding is timed by ``text_encoding.py``), 448-px inputs (448 × 597,
a VOC-shaped image whose short side is already 448) under the ``phreg`` protocol of ``ovseg/voc21``:
resize 448, 336-px windows with stride 112 → 8 windows per image, batched.

* harness: resize + normalise, windows, forward, cosine matching, upsampling, sum / count, resize to the
  label size, softmax, synonym max, threshold, argmax, confusion matrix and the Pearson metric;
* bare: ``forward_tokens`` alone over the same window batches (prepared beforehand).

Prints images/s, the overhead ratio and peak memory (CUDA: ``max_memory_allocated``; CPU: the process's
peak RSS). Defaults keep a CPU run to a couple of minutes::

    python benchmarks/ovseg_harness.py [--device cuda] [--images 2] [--batch-size 8] [--precision fp32]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import numpy as np
import torch

from phreg_bench.inference import HarnessSettings, OVSegPredictor, window_boxes
from phreg_bench.metrics.segmentation import PearsonMetric, SegmentationMetric
from phreg_bench.registries import BACKBONES, METHODS, TASKS
from phreg_bench.tasks.specs import class_file
from phreg_bench.text import ClassQueries, read_class_names


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="openai-clip-vit-b16")
    parser.add_argument("--method", default="naclip")
    parser.add_argument("--task", default="ovseg/voc21")
    parser.add_argument("--protocol", default="phreg")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--size", default="448x597", help="input HxW")
    args = parser.parse_args()
    device = torch.device(args.device)
    height, width = (int(v) for v in args.size.split("x"))

    backbone = BACKBONES.get(args.backbone)(None, random_init=True)
    model = METHODS.get(args.method)(backbone).to(device).eval()
    spec = TASKS.get(args.task)
    _, protocol = spec.protocol(args.protocol)
    settings = HarnessSettings.from_settings(protocol)
    classes = read_class_names(class_file(spec.classes))
    query_class = torch.tensor([c for c, names in enumerate(classes) for _ in names], device=device)
    text = torch.nn.functional.normalize(torch.randn(len(query_class), backbone.info.output_dim), dim=-1)
    queries = ClassQueries(text.to(device), query_class, [str(i) for i in range(len(query_class))], len(classes))
    predictor = OVSegPredictor(model, queries, settings, batch_size=args.batch_size, device=device)

    rng = np.random.default_rng(0)
    total = args.warmup + args.images
    images = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(total)]
    labels = [torch.from_numpy(rng.integers(0, len(classes), size=(height, width))).to(device) for _ in range(total)]
    autocast = (torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[args.precision])
                if device.type == "cuda" and args.precision != "fp32" else contextlib.nullcontext())

    def harness(index: int, metric: SegmentationMetric, pearson: PearsonMetric) -> None:
        pred, logits = predictor.predict(images[index], out_size=(height, width))
        metric.update(pred, labels[index])
        with torch.inference_mode():
            pearson.update(queries.synonym_plan(logits), labels[index])

    windows = []
    with torch.inference_mode():
        for image in images:
            inputs = predictor.prepare(image)
            boxes = window_boxes(*inputs.shape[-2:], settings.crop, settings.stride)
            windows.append(torch.cat([inputs[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes]))

    @torch.inference_mode()
    def bare(index: int) -> None:
        batch = windows[index]
        for start in range(0, batch.shape[0], args.batch_size):
            model.forward_tokens(batch[start : start + args.batch_size]).patches.float().sum().item()

    timings = {}
    with autocast:
        for name in ("bare", "harness", "bare2", "harness2"):  # interleaved twice: drift shows up as a spread
            metric, pearson = SegmentationMetric(len(classes), device=device), PearsonMetric()
            for index in range(args.warmup):
                bare(index) if name.startswith("bare") else harness(index, metric, pearson)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            for index in range(args.warmup, total):
                bare(index) if name.startswith("bare") else harness(index, metric, pearson)
            sync(device)
            timings[name] = (time.perf_counter() - start, peak_mb(device))

    bare_s = min(timings["bare"][0], timings["bare2"][0])
    harness_s = min(timings["harness"][0], timings["harness2"][0])
    print(f"{args.backbone} (random init) + {args.method}, {args.task} protocol {args.protocol} "
          f"({settings.resize}/{settings.crop}/{settings.stride}), {height}x{width} input, "
          f"{windows[0].shape[0]} windows/image, batch {args.batch_size}, {device} {args.precision}, "
          f"{args.images} timed images")
    print(f"bare forward : {args.images / bare_s:8.3f} images/s  ({bare_s / args.images:.3f} s/image; runs "
          f"{timings['bare'][0]:.2f} / {timings['bare2'][0]:.2f} s)  peak {timings['bare'][1]:.0f} MiB")
    print(f"harness      : {args.images / harness_s:8.3f} images/s  ({harness_s / args.images:.3f} s/image; runs "
          f"{timings['harness'][0]:.2f} / {timings['harness2'][0]:.2f} s)  peak {timings['harness'][1]:.0f} MiB")
    print(f"overhead     : {100 * (harness_s / bare_s - 1):+.1f} % of the bare forward (goal < 15 %)")


if __name__ == "__main__":
    main()
