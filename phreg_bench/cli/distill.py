"""`phreg-bench distill`: train PH-Reg registers for a backbone on a folder of images.

    phreg-bench distill --backbone X --data DIR --out DIR [--registers 16 --views 10 --epochs E
                        --batch-size B --resume --weights PATH --random-init ...]

Multi-GPU: ``torchrun --nproc_per_node G -m phreg_bench distill ...`` (``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from phreg_bench.cli import OptionError, say
from phreg_bench.cli._options import device_name, fraction, non_negative_int, positive_float, positive_int
from phreg_bench.cli.run import add_pos_resample_option, with_pos_resample


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="distil PH-Reg registers into a backbone (writes an adapter)",
        description="Self-distil test-time-denoised teacher features into a student with new registers "
        "(PH-Reg). Writes OUT/adapter.safetensors + OUT/adapter.json, checkpoints and log.jsonl.")
    parser.add_argument("--backbone", "-b", required=True, help="backbone name (see `phreg-bench ls backbones`)")
    parser.add_argument("--data", type=Path, help="folder of training images (recursive jpg/png/webp)")
    parser.add_argument("--hf-dataset", help="Hugging Face dataset name instead of --data (needs the [hf] extra)")
    parser.add_argument("--hf-split", default="train")
    parser.add_argument("--hf-image-column", default="image")
    parser.add_argument("--out", type=Path, required=True, help="output folder (adapter, checkpoints, log)")
    parser.add_argument("--weights", help="local weights file for the backbone")
    parser.add_argument("--random-init", action="store_true", help="random backbone weights (smoke tests)")
    add_pos_resample_option(parser)
    parser.add_argument("--recipe", default="auto", choices=("auto", "clip", "dinov2"),
                        help="hyper-parameter preset; auto = clip for CLIP towers, dinov2 otherwise")
    parser.add_argument("--registers", type=non_negative_int, default=16, help="new register tokens (default 16)")
    parser.add_argument("--views", type=positive_int, default=10, help="TTA views per image (default 10)")
    parser.add_argument("--shift-frac", type=fraction, default=0.15, help="max shift / grid (default 0.15)")
    parser.add_argument("--epochs", type=positive_int, default=100, help="epochs (default 100)")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this many steps in total")
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per step and process (default: the recipe's)")
    parser.add_argument("--lr", type=positive_float, help="initial learning rate (default: the recipe's)")
    parser.add_argument("--lr-end", type=positive_float, help="final learning rate (default: the recipe's)")
    parser.add_argument("--resolution", type=positive_int,
                        help="training crop (default: the recipe's 448/518 if a multiple of the patch size, "
                        "else the backbone's native resolution)")
    parser.add_argument("--unlock", default="official",
                        help="official (code: CLIP last 2 blocks), paper (last block), or a list such as "
                        "'registers,pos_embed,patch_embed,last_blocks=1'")
    parser.add_argument("--student-last-block", default="auto",
                        help="auto (CLIP: maskclip value path; others: unchanged), none, or a preset name")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--checkpoint-every", type=non_negative_int, default=1000,
                        help="steps between checkpoints (0: only at the end)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--cache-targets", type=Path, help="cache denoised teacher targets here (fixes crops)")
    parser.add_argument("--device", default="auto", type=device_name, help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto = bf16 autocast on CUDA, fp32 on CPU")
    workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    parser.add_argument("--num-workers", type=non_negative_int, default=workers,
                        help=f"data-loading processes (default: 4, at most the usable CPU cores; here {workers})")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=handle)


def _resolution(requested: int | None, recipe_resolution: int, patch: int, native: int) -> int:
    if requested is not None:
        if requested % patch:
            raise OptionError(f"--resolution {requested} is not a multiple of the patch size {patch}")
        return requested
    return recipe_resolution if recipe_resolution % patch == 0 else native


def check_distill(args: argparse.Namespace) -> None:
    """The checks of `phreg-bench distill` that need more than one option or the file system (before any model)."""
    if (args.data is None) == (args.hf_dataset is None):
        raise OptionError("pass exactly one of --data DIR or --hf-dataset NAME")
    if args.data is not None and not args.data.is_dir():
        raise OptionError(f"--data {args.data} is not a folder; pass the folder of training images")
    if args.hf_dataset is not None and importlib.util.find_spec("datasets") is None:
        raise OptionError("--hf-dataset needs the Hugging Face `datasets` package: pip install 'phreg-bench[hf]'")
    if args.out.exists() and not args.out.is_dir():
        raise OptionError(f"--out {args.out} is a file; pass a folder")
    if args.weights is not None and args.random_init:
        raise OptionError("--weights and --random-init exclude each other")


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.backbones.build import build_backbone
    from phreg_core.data import HFImageDataset, ImageFolderDataset
    from phreg_core.student import Student
    from phreg_core.teacher import default_teacher, is_clip_family
    from phreg_core.trainer import RECIPES, DistillConfig, distill

    check_distill(args)
    backbone = build_backbone(args.backbone, weights=args.weights, random_init=args.random_init,
                              **with_pos_resample({}, args.pos_resample))
    vision = backbone.vision
    recipe = args.recipe if args.recipe != "auto" else ("clip" if is_clip_family(vision) else "dinov2")
    preset = RECIPES[recipe]
    resolution = _resolution(args.resolution, preset.resolution, vision.patch_size, backbone.native_resolution[0])
    config = DistillConfig(
        epochs=args.epochs, batch_size=preset.batch_size if args.batch_size is None else args.batch_size,
        lr=preset.lr if args.lr is None else args.lr, lr_end=preset.lr_end if args.lr_end is None else args.lr_end,
        resolution=resolution, views=args.views, shift_frac=args.shift_frac,
        seed=args.seed, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every, out_dir=str(args.out),
        resume=args.resume, device=args.device, precision=args.precision, num_workers=args.num_workers,
        cache_targets=str(args.cache_targets) if args.cache_targets else None, progress=not args.no_progress,
        base_name=backbone.name, base_weights_sha256=backbone.identity.weights_sha256,
        extra={"recipe": recipe, "backbone": backbone.describe(), "unlock": args.unlock,
               "student_last_block": args.student_last_block},
    )
    fixed = config.cache_targets is not None
    if args.data is not None:
        dataset = ImageFolderDataset(args.data, resolution, vision.mean, vision.std, seed=args.seed, fixed_crops=fixed)
    else:
        dataset = HFImageDataset.from_hub(args.hf_dataset, args.hf_split, resolution=resolution, mean=vision.mean,
                                          std=vision.std, image_column=args.hf_image_column, seed=args.seed,
                                          fixed_crops=fixed)
    grid = vision.grid_for(resolution, resolution)
    last_block = None if args.student_last_block == "none" else args.student_last_block
    student = Student(vision, args.registers, last_block=last_block, unlock=args.unlock, train_grid=grid,
                      seed=args.seed)
    teacher = default_teacher(vision)
    result = distill(teacher, student, dataset, config)
    say(f"distilled {result.steps} steps ({result.images_seen} images, {result.skipped_batches} batches skipped, "
        f"{result.corrupt_images} unreadable files); final loss {result.final_loss}")
    say("adapter: ", result.adapter_path)
    return 0
