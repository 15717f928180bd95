"""`phreg-bench ttr find`: find the register neurons of a backbone for test-time registers.

    phreg-bench ttr find --backbone B --data DIR --out neurons.json [--threshold 30 --detect-layer -1
                         --highest-layer L --lowest-layer 0 --top-k 10 --num-images 500 --sparsity-filter
                         --resolution R --batch-size 16 --seed 0 --device auto --weights PATH --random-init]

Then ``phreg-bench run -b B -m ttr -o neurons=neurons.json -t …``. The defaults are the reference code's
(``nickjiang2378/test-time-registers``; see :mod:`phreg_core.ttr`); the outlier threshold is an absolute
residual-stream norm and depends on the model (30 for CLIP ViT-B/16, 150 for DINOv2-L in the reference
configs): if no image has an outlier, the error gives the largest norm seen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from phreg_core.ttr_settings import FinderSettings  # no torch: the defaults show in --help

DEFAULTS = FinderSettings()


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ttr", help="test-time registers: find a backbone's register neurons",
        description="Test-time registers (Jiang et al., NeurIPS'25, arXiv:2506.08010).")
    commands = parser.add_subparsers(dest="ttr_command", metavar="SUBCOMMAND", required=True)
    find = commands.add_parser(
        "find", help="score MLP neurons on a folder of images and write the register neurons (JSON)",
        description="Rank every MLP hidden unit by its mean |activation| at high-norm outlier tokens, keep the "
        "top ones, and write them with their scores, the settings and the backbone identity.")
    find.add_argument("--backbone", "-b", required=True, help="backbone name (see `phreg-bench ls backbones`)")
    find.add_argument("--data", type=Path, required=True, help="folder of images (recursive jpg/png/webp)")
    find.add_argument("--out", type=Path, required=True, help="neurons JSON file to write")
    find.add_argument("--weights", help="local weights file for the backbone")
    find.add_argument("--random-init", action="store_true", help="random backbone weights (smoke tests)")
    find.add_argument("--threshold", type=float, default=DEFAULTS.threshold,
                      help=f"outlier norm at --detect-layer (default {DEFAULTS.threshold:g}; reference: 30 CLIP "
                      "ViT-B/16, 150 DINOv2-L)")
    find.add_argument("--detect-layer", type=int, default=DEFAULTS.detect_layer,
                      help=f"block whose output norms mark the outliers (default {DEFAULTS.detect_layer}; "
                      "reference DINOv2-L: -2)")
    find.add_argument("--highest-layer", type=int, default=DEFAULTS.highest_layer,
                      help="keep neurons of blocks up to this one (default: all; reference: 5 for CLIP ViT-B/16, "
                      "17 for DINOv2-L)")
    find.add_argument("--lowest-layer", type=int, default=DEFAULTS.lowest_layer,
                      help=f"keep neurons of blocks from this one (default {DEFAULTS.lowest_layer})")
    find.add_argument("--top-k", type=int, default=DEFAULTS.top_k,
                      help=f"neurons to keep (default {DEFAULTS.top_k}; reference DINOv2-L: 50)")
    find.add_argument("--sparsity-filter", action="store_true",
                      help="score 0 for neurons not below 0.5 on at least half of the tokens (reference notebook)")
    find.add_argument("--num-images", type=int, default=500, help="images sampled from --data (default 500)")
    find.add_argument("--resolution", type=int, help="square crop size (default: the backbone's native one)")
    find.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    find.add_argument("--seed", type=int, default=0, help="image sample and crop seed (default 0)")
    find.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    find.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    find.set_defaults(handler=handle_find)


def handle_find(args: argparse.Namespace) -> int:
    from phreg_bench.backbones.build import build_backbone
    from phreg_bench.cli import console
    from phreg_bench.cli._options import resolve_device
    from phreg_bench.methods.ttr import find_neurons, write_neurons
    from phreg_bench.progress import make_progress
    from phreg_core.data import list_images

    settings = FinderSettings(threshold=args.threshold, detect_layer=args.detect_layer,
                              highest_layer=args.highest_layer, lowest_layer=args.lowest_layer, top_k=args.top_k,
                              sparsity_filter=args.sparsity_filter)
    list_images(args.data)  # a missing or empty folder fails here, before a model is built
    device = resolve_device(args.device)
    backbone = build_backbone(args.backbone, weights=args.weights, random_init=args.random_init)
    settings.check(backbone.vision.depth)
    backbone.to(device).eval()
    with make_progress(console=console, transient=True, disable=args.no_progress) as progress:
        document = find_neurons(backbone, args.data, settings, num_images=args.num_images,
                                resolution=args.resolution, batch_size=args.batch_size, seed=args.seed,
                                device=device, progress=progress)
    path = write_neurons(args.out, document)
    images = document["images"]
    console.print(f"{images['with_outliers']} of {images['seen']} images had outlier tokens; "
                  f"{len(document['neurons'])} register neurons -> {path}")
    for row in document["neurons"]:
        console.print(f"  block {row['layer']:>3}  unit {row['neuron']:>5}  score {row['score']:.3f}", highlight=False)
    return 0
