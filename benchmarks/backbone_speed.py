"""Backbone speed and memory: dense-feature throughput and text-encoding throughput.

Random weights of the real architectures (no download), so the numbers are about compute only::

    python benchmarks/backbone_speed.py --backbones openai-clip-vit-b16,dinov2-vit-b14 --device cuda
    python benchmarks/backbone_speed.py --backbones openai-clip-vit-b16 --device cpu --resolution 224 --iters 3

For each backbone: images/s of ``forward_tokens`` (final layer, projected for CLIP) at the given
resolution and batch, peak GPU memory, and for CLIP backbones prompts/s of ``encode_text`` with the
context cut at the batch's longest prompt versus the full 77-token context (same embeddings, tested in
``tests/test_backbones_text.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from phreg_bench.backbones.build import build_backbone

CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
           "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor"]
TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "a sculpture of a {}.", "a rendering of a {}.",
             "graffiti of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.", "a photo of the small {}."]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def _timed(fn, device: torch.device, iters: int) -> float:
    fn()  # warm-up (kernel selection, allocator)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def bench_backbone(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, str]:
    backbone = build_backbone(name, random_init=True, reduced=args.reduced).to(device).eval()
    size = args.resolution or backbone.native_resolution[0]
    size -= size % backbone.patch_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward():
        with torch.inference_mode(), _autocast(device, args.precision):
            backbone.forward_tokens(images, project=backbone.has_text)

    seconds = _timed(forward, device, args.iters)
    row = {"backbone": name, "input": f"{args.batch}x{size}²", "images/s": f"{args.batch / seconds:.1f}",
           "ms/batch": f"{1000 * seconds:.1f}",
           "peak MiB": f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"}
    if backbone.has_text:
        prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
        tower = backbone.text

        def encode():
            with _autocast(device, args.precision):
                tower.encode(prompts)

        cut = _timed(encode, device, args.iters)
        tower.can_truncate, was = False, tower.can_truncate
        full = _timed(encode, device, args.iters)
        tower.can_truncate = was
        row["prompts/s cut"] = f"{len(prompts) / cut:.0f}"
        row["prompts/s full"] = f"{len(prompts) / full:.0f}"
        row["text speed-up"] = f"{full / cut:.2f}x"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="openai-clip-vit-b16,dinov2-vit-b14")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--resolution", type=int, default=448, help="square input side (0: native)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--reduced", action="store_true", help="tiny config of the same code path (smoke test)")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [bench_backbone(name.strip(), args, device) for name in args.backbones.split(",") if name.strip()]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
    print(f"backbone speed ({device}, {args.precision}, torch {torch.__version__})")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row.get(c, "").ljust(widths[c]) for c in columns))

if __name__ == "__main__":
    main()
