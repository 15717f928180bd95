"""`phreg-bench distill`: train PH-Reg registers for a backbone on a folder of images.

    phreg-bench distill --backbone X --data DIR --out DIR [--registers R --views N --epochs E
                        --batch-size B --resume --weights PATH --random-init ...]

Every recipe option left unset takes the value of the chosen preset (``--recipe``,
:data:`phreg_core.recipe.RECIPES`); runtime options left unset take :class:`phreg_core.recipe.RunOptions`'
defaults. The defaults are read from those dataclasses (torch-free), never repeated here.
Multi-GPU: ``torchrun --nproc_per_node G -m phreg_bench distill ...`` (``--batch-size`` is per process).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from phreg_bench.cli import OptionError, say
from phreg_bench.cli._options import (
    add_pos_resample_option,
    device_name,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    with_pos_resample,
)
from phreg_core.recipe import DEFAULT_REGISTERS, PRECISIONS, RECIPES, Recipe, RunOptions

# the Recipe fields the command line may override, each an option of the same name (unset: the preset's value)
_RECIPE_OPTIONS = ("views", "shift_frac", "epochs", "batch_size", "lr", "lr_end", "seed", "precision")


def _preset_default(name: str) -> str:
    """Help text for a recipe option: the default, or each preset's where they differ."""
    values = {preset: getattr(recipe, name) for preset, recipe in RECIPES.items()}
    if len(set(values.values())) == 1:
        return f"default {Recipe.default(name)}"
    return "default: the recipe's, " + ", ".join(f"{value} for {preset}" for preset, value in values.items())


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill", help="distil PH-Reg registers into a backbone (writes an adapter)",
        description="Self-distil test-time-denoised teacher features into a student with new registers "
        "(PH-Reg). Writes OUT/adapter.safetensors + OUT/adapter.json, checkpoints and log.jsonl.")
    parser.add_argument("--backbone", "-b", required=True, help="backbone name (see `phreg-bench ls backbones`)")
    parser.add_argument("--data", type=Path, help="folder of training images (recursive jpg/png/webp)")
    parser.add_argument("--hf-dataset", help="Hugging Face dataset name instead of --data (needs the [hf] extra)")
    parser.add_argument("--hf-split", default="train", help="split of --hf-dataset to train on (default: train)")
    parser.add_argument("--hf-image-column", default="image",
                        help="column of --hf-dataset that holds the images (default: image)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (adapter, checkpoints, log)")
    parser.add_argument("--weights", help="local weights file for the backbone")
    parser.add_argument("--random-init", action="store_true", help="random backbone weights (smoke tests)")
    add_pos_resample_option(parser)
    parser.add_argument("--recipe", default="auto", choices=("auto", *RECIPES),
                        help="hyper-parameter preset; auto = clip for CLIP towers, dinov2 otherwise (default: auto)")
    parser.add_argument("--registers", type=non_negative_int, default=DEFAULT_REGISTERS,
                        help=f"new register tokens (default {DEFAULT_REGISTERS})")
    parser.add_argument("--views", type=positive_int, help=f"TTA views per image ({_preset_default('views')})")
    parser.add_argument("--shift-frac", type=fraction, help=f"max shift / grid ({_preset_default('shift_frac')})")
    parser.add_argument("--epochs", type=positive_int, help=f"epochs ({_preset_default('epochs')})")
    parser.add_argument("--max-steps", type=positive_int, help="stop after this many steps in total")
    parser.add_argument("--batch-size", type=positive_int,
                        help=f"images per step and process ({_preset_default('batch_size')})")
    parser.add_argument("--lr", type=positive_float, help=f"initial learning rate ({_preset_default('lr')})")
    parser.add_argument("--lr-end", type=positive_float, help=f"final learning rate ({_preset_default('lr_end')})")
    parser.add_argument("--resolution", type=positive_int,
                        help=f"training crop ({_preset_default('resolution')}, if a multiple of the patch "
                        "size, else the backbone's native resolution)")
    parser.add_argument("--unlock", default="official",
                        help="what the student trains: official (the released code: CLIP's last 2 blocks), paper "
                        "(the last block), or a list such as 'registers,pos_embed,patch_embed,last_blocks=1' "
                        "(default: official)")
    parser.add_argument("--student-last-block", default="auto",
                        help="auto (CLIP: maskclip value path; others: unchanged), none, or a preset name "
                        "(default: auto)")
    parser.add_argument("--seed", type=non_negative_int, help=f"random seed ({_preset_default('seed')})")
    parser.add_argument("--checkpoint-every", type=non_negative_int,
                        help=f"steps between checkpoints (0: only at the end; default "
                        f"{RunOptions.default('checkpoint_every')})")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--cache-targets", type=Path, help="cache denoised teacher targets here (fixes crops)")
    parser.add_argument("--device", type=device_name,
                        help=f"cpu, cuda, cuda:N, mps or auto (default {RunOptions.default('device')})")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"auto = bf16 autocast on CUDA, fp32 on CPU ({_preset_default('precision')})")
    workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    parser.add_argument("--num-workers", type=non_negative_int, default=workers,
                        help=f"data-loading processes (default: 4, at most the usable CPU cores; here {workers})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
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


def recipe_from(args: argparse.Namespace, preset: str, resolution: int) -> Recipe:
    """The preset with only the recipe options the user gave (and the resolved training crop)."""
    given = {field: getattr(args, field) for field in _RECIPE_OPTIONS if getattr(args, field) is not None}
    return Recipe.from_preset(preset, resolution=resolution, **given)


def options_from(args: argparse.Namespace) -> RunOptions:
    """The run options of the command line (unset ones keep :class:`RunOptions`' defaults)."""
    given = {"device": args.device, "checkpoint_every": args.checkpoint_every}
    return RunOptions(out_dir=str(args.out), resume=args.resume, max_steps=args.max_steps,
                      num_workers=args.num_workers, progress=not args.no_progress,
                      cache_targets=str(args.cache_targets) if args.cache_targets else None,
                      **{k: v for k, v in given.items() if v is not None})


def handle(args: argparse.Namespace) -> int:
    from phreg_bench.backbones.build import build_backbone
    from phreg_core.data import HFImageDataset, ImageFolderDataset
    from phreg_core.student import Student
    from phreg_core.teacher import default_teacher, is_clip_family
    from phreg_core.trainer import distill

    check_distill(args)
    backbone = build_backbone(args.backbone, weights=args.weights, random_init=args.random_init,
                              **with_pos_resample({}, args.pos_resample))
    vision = backbone.vision
    preset = args.recipe if args.recipe != "auto" else ("clip" if is_clip_family(vision) else "dinov2")
    resolution = _resolution(args.resolution, RECIPES[preset].resolution, vision.patch_size,
                             backbone.native_resolution[0])
    recipe = recipe_from(args, preset, resolution)
    options = options_from(args)
    fixed = options.cache_targets is not None  # a cached target is valid for one crop
    if args.data is not None:
        dataset = ImageFolderDataset(args.data, resolution, vision.mean, vision.std, seed=recipe.seed,
                                     fixed_crops=fixed)
    else:
        dataset = HFImageDataset.from_hub(args.hf_dataset, args.hf_split, resolution=resolution, mean=vision.mean,
                                          std=vision.std, image_column=args.hf_image_column, seed=recipe.seed,
                                          fixed_crops=fixed)
    grid = vision.grid_for(resolution, resolution)
    last_block = None if args.student_last_block == "none" else args.student_last_block
    student = Student(vision, args.registers, last_block=last_block, unlock=args.unlock, train_grid=grid,
                      seed=recipe.seed)
    teacher = default_teacher(vision)
    result = distill(teacher, student, dataset, recipe, options, base_name=backbone.name,
                     base_weights_sha256=backbone.identity.weights_sha256)
    say(f"distilled {result.steps} steps ({result.images_seen} images, {result.skipped_batches} batches skipped, "
        f"{result.corrupt_images} unreadable files); final loss {result.final_loss}")
    say("adapter: ", result.adapter_path)
    return 0
