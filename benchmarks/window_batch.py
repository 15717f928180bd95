"""Windows per forward pass on this machine: the ovseg tower on batches of 1 vs N sliding windows.

The ``phreg`` protocol of ``ovseg/voc21`` slides 336 x 336 windows (8 per VOC-sized image); this times the
image tower (CLIP ViT-B/16, random weights, NACLIP last block) on the same 8 windows fed 1 at a time and
``--batch`` at a time, interleaved, fastest of ``--repeats``, and prints the time ratio (batch N / batch 1;
above 1 means one window at a time is faster). The CLI default ``--batch-size`` per device type comes from
this measurement (``phreg_bench/cli/run.py``)::

    python benchmarks/window_batch.py [--device cpu] [--threads 2] [--batch 8] [--precision fp32]
"""

from __future__ import annotations

import argparse
import time

import torch

from phreg_bench.backbones.build import build_backbone
from phreg_bench.precision import resolve_precision
from phreg_bench.registries import METHODS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="openai-clip-vit-b16")
    parser.add_argument("--method", default="naclip")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=336)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision(device, args.precision)
    model = METHODS.get(args.method)(build_backbone(args.backbone, random_init=True)).to(device).eval()
    model.set_precision(precision)  # the model autocasts its own forward
    windows = torch.randn(args.windows, 3, args.crop, args.crop, generator=torch.Generator().manual_seed(0))
    windows = windows.to(device)

    @torch.inference_mode()
    def run(batch: int) -> None:
        for start in range(0, len(windows), batch):
            out = model.forward_tokens(windows[start : start + batch], project=True)[0].patches
            out.sum().item()

    timings: dict[int, list[tuple[float, float]]] = {1: [], args.batch: []}
    for batch in timings:  # warm-up
        run(batch)
    for _ in range(args.repeats):
        for batch in timings:
            wall, cpu = time.perf_counter(), time.process_time()
            run(batch)
            timings[batch].append((time.perf_counter() - wall, time.process_time() - cpu))
    print(f"{args.backbone} + {args.method}, {args.windows} windows of {args.crop}px, {device} {precision}, "
          f"{torch.get_num_threads()} threads")
    for batch, runs in timings.items():
        text = ", ".join(f"{w:.2f}/{c:.2f}" for w, c in runs)
        print(f"  batch {batch:2d}: {args.windows / min(w for w, _ in runs):6.2f} windows/s  (wall/CPU s: {text})")
    wall_ratio = min(w for w, _ in timings[args.batch]) / min(w for w, _ in timings[1])
    cpu_ratio = min(c for _, c in timings[args.batch]) / min(c for _, c in timings[1])
    print(f"  time(batch {args.batch}) / time(batch 1) = {wall_ratio:.3f} wall, {cpu_ratio:.3f} process CPU")


if __name__ == "__main__":
    main()
