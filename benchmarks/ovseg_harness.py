"""Cost of the ovseg harness on top of a bare forward pass of the same images (goal: ratio <= 1.15).

A CLIP ViT-B/16 with random weights (the time does not depend on them), a method's last block (default
NACLIP), VOC21's 56 queries (random unit text embeddings: text encoding is timed by ``text_encoding.py``)
and a protocol of ``ovseg/voc21`` (default ``naclip``: short side 336, whole image) on VOC-sized random
images (375 x 500) with random labels:

* harness: ``OVSegPredictor.predict_classes`` (resize + normalise, windows or whole image, forward,
  cosine matching, upsampling, sum / count, resize to the label size, classification) + the confusion
  matrix + the Pearson metric, i.e. the ``ovseg`` task's per-image loop;
* bare: ``forward_tokens`` alone on the same resized, normalised inputs (windows batched as the harness
  batches them), prepared beforehand.

Both run under the same ``--precision`` (fp32, and bf16 / fp16 autocast of the tower: the model autocasts
only its own forward). Runs are interleaved (bare, harness, bare, harness, ...) and the fastest of ``--repeats``
is kept, which is what a shared machine allows. Prints images/s, the harness/bare ratio of wall time and
of process CPU time (on a loaded machine the CPU-time ratio is the steadier one; with one thread it is the
work ratio) and peak memory (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS)::

    python benchmarks/ovseg_harness.py [--precision fp32 bf16] [--protocol naclip] [--images 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from phreg_bench.backbones.build import build_backbone
from phreg_bench.geometry import window_boxes
from phreg_bench.metrics.segmentation import PearsonMetric, SegmentationMetric
from phreg_bench.precision import resolve_precision
from phreg_bench.registries import METHODS, TASKS
from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor
from phreg_bench.tasks.ovseg.text import ClassQueries, read_class_names
from phreg_bench.tasks.specs import class_file


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_inputs(predictor: OVSegPredictor, image: np.ndarray) -> list[torch.Tensor]:
    """The tower's input batches for one image, as the harness forms them."""
    settings = predictor.settings
    with torch.inference_mode():
        inputs = predictor.prepare(image)
        if settings.crop <= 0:
            height, width = inputs.shape[-2:]
            patch = predictor.patch
            return [inputs[..., : height // patch * patch, : width // patch * patch]]
        boxes = window_boxes(*inputs.shape[-2:], settings.crop, settings.stride)
        windows = torch.cat([inputs[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in boxes])
        patch = predictor.patch
        windows = windows[..., : windows.shape[-2] // patch * patch, : windows.shape[-1] // patch * patch]
        return list(windows.split(predictor.batch_size))


def measure(args: argparse.Namespace, precision: str) -> dict[str, float]:
    device = torch.device(args.device)
    precision = resolve_precision(device, precision)
    backbone = build_backbone(args.backbone, random_init=True)
    model = METHODS.get(args.method)(backbone).to(device).eval()
    spec = TASKS.get(args.task)
    _, protocol = spec.protocol(args.protocol)
    settings = HarnessSettings.from_settings(protocol)
    classes = read_class_names(class_file(spec.classes))
    query_class = torch.tensor([c for c, names in enumerate(classes) for _ in names], device=device)
    generator = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(len(query_class), backbone.output_dim,
                                                     generator=generator), dim=-1)
    queries = ClassQueries(text.to(device), query_class, [str(i) for i in range(len(query_class))], len(classes))
    model.set_precision(precision)
    predictor = OVSegPredictor(model, queries, settings, batch_size=args.batch_size, device=device)
    height, width = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(args.images)]
    labels = [torch.from_numpy(rng.integers(0, len(classes), size=(height, width))).to(device)
              for _ in range(args.images)]
    batches = [bare_inputs(predictor, image) for image in images]

    def harness() -> None:
        metric, pearson = SegmentationMetric(len(classes), device=device), PearsonMetric()
        for image, label in zip(images, labels, strict=True):
            pred, class_logits = predictor.predict_classes(image, out_size=(height, width))
            metric.update(pred, label)
            with torch.inference_mode():
                pearson.update(class_logits, label)
        metric.compute(), pearson.compute()

    @torch.inference_mode()
    def bare() -> None:
        for windows in batches:
            for batch in windows:
                patches = model.forward_tokens(batch, project=True)[0].patches
                patches.sum().item()

    wall: dict[str, list[float]] = {"bare": [], "harness": []}
    cpu: dict[str, list[float]] = {"bare": [], "harness": []}
    for run in ("bare", "harness"):  # warm-up (allocator, kernels, the synonym plan)
        (bare if run == "bare" else harness)()
    for _ in range(args.repeats):
        for name, fn in (("bare", bare), ("harness", harness)):
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    bare_s, harness_s = min(wall["bare"]), min(wall["harness"])
    windows = sum(int(b.shape[0]) for b in batches[0])
    print(f"{args.backbone} (random init) + {args.method}, {args.task} protocol {args.protocol} "
          f"(resize {settings.resize}, crop {settings.crop}, stride {settings.stride}), {height}x{width} images, "
          f"{windows} window(s)/image, batch {args.batch_size}, {device} {precision}, {args.images} images, "
          f"{torch.get_num_threads()} threads")
    for name in ("bare", "harness"):
        runs = ", ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(wall[name], cpu[name], strict=True))
        print(f"  {name:8s}: {args.images / min(wall[name]):7.3f} images/s  (wall/CPU s per run: {runs})")
    ratio_cpu = min(cpu["harness"]) / min(cpu["bare"])
    print(f"  harness / bare = {harness_s / bare_s:.3f} wall, {ratio_cpu:.3f} process CPU time "
          f"(goal <= 1.15)   peak {peak_mb(device):.0f} MiB")
    return {"bare_s": bare_s, "harness_s": harness_s, "ratio_cpu": ratio_cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="openai-clip-vit-b16")
    parser.add_argument("--method", default="naclip")
    parser.add_argument("--task", default="ovseg/voc21")
    parser.add_argument("--protocol", default="naclip")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--size", default="375x500", help="image HxW (VOC-sized by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for precision in args.precision:
        measure(args, precision)


if __name__ == "__main__":
    main()
