"""Peak memory of evaluating a PH-Reg student: sharing the frozen weights with the base vs copying the tower.

Each variant runs in a fresh process (peak RSS is per process): build the backbone with random weights
(default: CLIP ViT-L/14, the weights do not change the memory), then

* ``base``: one forward of the base tower;
* ``copy``: the previous student (a float32 deep copy of the whole tower: two towers in memory) + a forward;
* ``shared``: the student sharing its frozen blocks with the base (only the unlocked blocks, patch
  embedding, positional table and registers are new) + a forward;

at ``--resolution`` (default 448, the CLIP recipe's training grid). Prints each peak RSS, the memory above the
interpreter + torch baseline, the copy / shared ratio and the size of the unlocked weights::

    python benchmarks/student_memory.py [--backbone openai-clip-vit-l14] [--resolution 448] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(args: argparse.Namespace) -> dict[str, float]:
    import torch

    from phreg_bench.backbones.build import build_backbone
    from phreg_core.student import Student

    torch.set_num_threads(args.threads)
    baseline = rss_mb()
    backbone = build_backbone(args.backbone, random_init=True)
    base = backbone.vision.eval()
    tower_mb = sum(p.numel() * p.element_size() for p in base.parameters()) / 2**20
    model, unlocked_mb = base, 0.0
    if args.variant != "base":
        grid = base.grid_for(args.resolution, args.resolution)
        model = Student(base, 16, train_grid=grid, share_frozen=args.variant == "shared").eval()
        unlocked_mb = sum(p.numel() * p.element_size() for _, p in model.trainable_named_parameters()) / 2**20
    images = torch.randn(1, 3, args.resolution, args.resolution)
    with torch.inference_mode():
        model.forward_tokens(images)
    return {"peak_mb": rss_mb(), "baseline_mb": baseline, "tower_mb": tower_mb, "unlocked_mb": unlocked_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="openai-clip-vit-l14")
    parser.add_argument("--resolution", type=int, default=448)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=("base", "copy", "shared"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("base", "copy", "shared"):
        command = [sys.executable, __file__, "--variant", variant, "--backbone", args.backbone,
                   "--resolution", str(args.resolution), "--threads", str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    base = results["base"]
    print(f"{args.backbone} (random init), one {args.resolution}x{args.resolution} forward, CPU; tower "
          f"{base['tower_mb']:.0f} MiB, unlocked weights {results['shared']['unlocked_mb']:.0f} MiB")
    for variant, row in results.items():
        above = row["peak_mb"] - row["baseline_mb"]
        print(f"  {variant:6s}: peak RSS {row['peak_mb']:7.0f} MiB  ({above:7.0f} MiB above the interpreter + torch)")
    copy_above = results["copy"]["peak_mb"] - results["copy"]["baseline_mb"]
    shared_above = results["shared"]["peak_mb"] - results["shared"]["baseline_mb"]
    print(f"  copy / shared = {copy_above / shared_above:.2f} (memory above the baseline); shared / base = "
          f"{shared_above / (base['peak_mb'] - base['baseline_mb']):.2f} (goal: about one tower + the unlocked "
          "blocks)")


if __name__ == "__main__":
    main()
