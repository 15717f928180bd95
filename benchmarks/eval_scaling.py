"""Data-parallel evaluation throughput: images/s of one ``ovseg`` task at 1 and at N processes (``torchrun``).

Generates a VOC-layout dataset of ``--images`` random 375 x 500 images (the VOC val shape), then runs
``phreg-bench run`` on it three times with the same command line: once to fill the text-embedding cache
(not timed), once as one process, once under ``torchrun --standalone --nproc_per_node N`` (gloo on CPU,
NCCL on CUDA). Throughput = evaluated images / the task's ``timings.total_s`` from rank 0's result file
(which includes the final reductions, so it waits for the slowest rank). Each process gets ``--threads``
intra-op threads (default 1), so on CPU the ratio measures data parallelism, not thread scaling. Prints
both rates and their ratio (ideal: N). Not a test: numbers depend on the machine and its load::

    python benchmarks/eval_scaling.py [--processes 2] [--images 16] [--device cpu] [--backbone-option reduced=true]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_voc(root: Path, count: int, seed: int = 0) -> None:
    """``root/VOCdevkit/VOC2012`` with ``count`` val images (random pixels, blocky 21-class labels)."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"2008_{i:06d}" for i in range(count)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        label = np.kron(rng.integers(0, 21, (24, 32)), np.ones((16, 16), dtype=np.int64))[:375, :500]
        Image.fromarray(label.astype(np.uint8), mode="L").save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(names) + "\n")


def run(command: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed:\n{done.stderr[-3000:]}")


def rate(results: Path) -> tuple[float, int, dict[str, float]]:
    """Images/s, process count and rank 0's phase seconds of the one result under ``results``."""
    (path,) = list(results.rglob("ovseg__*.json"))
    record = json.loads(path.read_text())
    timings = record["timings"]
    return record["status"]["num_samples"] / timings["total_s"], timings.get("processes", 1), timings["phases"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda: one GPU per process)")
    parser.add_argument("--backbone", default="openai-clip-vit-b16")
    parser.add_argument("--backbone-option", action="append", default=None,
                        help="default: reduced=true (a 2-block ViT-B/16, so a CPU run takes a minute)")
    parser.add_argument("--method", default="naclip")
    args = parser.parse_args()
    options = args.backbone_option if args.backbone_option is not None else ["reduced=true"]
    with tempfile.TemporaryDirectory(prefix="phreg-eval-scaling-") as temp:
        temp = Path(temp)
        write_voc(temp / "data", args.images)
        common = ["run", "--backbone", args.backbone, "--random-init", "--method", args.method, "--tasks",
                  "ovseg/voc21", "--data-root", str(temp / "data"), "--cache-dir", str(temp / "cache"),
                  "--device", args.device, "--overwrite", "always"]
        for option in options:
            common += ["--backbone-option", option]
        single = [sys.executable, "-m", "phreg_bench", *common]
        run([*single, "--results-dir", str(temp / "warm"), "--limit", "1"], args.threads)  # text cache
        run([*single, "--results-dir", str(temp / "one")], args.threads)
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.processes),
             "-m", "phreg_bench", *common, "--results-dir", str(temp / "many")], args.threads)
        one, _, one_phases = rate(temp / "one")
        many, processes, many_phases = rate(temp / "many")
    print(f"ovseg/voc21, {args.backbone} ({', '.join(options) or 'full'}), {args.method}, {args.images} images of "
          f"375x500, {args.device}, {args.threads} thread(s) per process")
    print(f"1 process:  {one:.3f} images/s  (phases: {one_phases})")
    print(f"{processes} processes: {many:.3f} images/s  (rank 0's phases: {many_phases})")
    print(f"scaling: {many / one:.2f}x (ideal {processes}x)")


if __name__ == "__main__":
    main()
