"""`phreg-bench adapter {import,push}`: bring the authors' PH-Reg students in, share adapters on the hub.

    phreg-bench adapter import --format official-clip FILE --backbone openai-clip-vit-b16 --out DIR
    phreg-bench adapter import --format official-dinov2 FILE --backbone dinov2-vit-b14 --out DIR
    phreg-bench adapter push DIR --repo <user>/<repo> [--private] [--dry-run]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from phreg_bench.cli import CliError, console


def register(subparsers) -> None:
    parser = subparsers.add_parser("adapter", help="import the authors' PH-Reg students; push adapters to the hub")
    sub = parser.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)

    imp = sub.add_parser(
        "import", help="convert the authors' released PH-Reg student into an adapter",
        description="Convert a state dict of the authors' PH-Reg student (0raiser0/PH-Reg) into "
        "OUT/adapter.safetensors + OUT/adapter.json for --backbone. official-clip: their ModifiedImageEncoder "
        "(zero_shot/segmentor.py); official-dinov2: their RegDINOv2Base (DINOv2_full evaluation code). Frozen "
        "tensors are checked against the base weights; the adapter records the base's weights sha256.")
    imp.add_argument("file", type=Path, help="the authors' state dict (.pth / .pt / .bin / .safetensors)")
    imp.add_argument("--format", required=True, choices=("official-clip", "official-dinov2"),
                     help="layout of FILE: official-clip (CLIP student) or official-dinov2 (DINOv2 student)")
    imp.add_argument("--backbone", "-b", required=True,
                     help="the base the student was distilled from (openai-clip-vit-b16 / dinov2-vit-b14)")
    imp.add_argument("--out", type=Path, required=True, help="output folder for adapter.safetensors + adapter.json")
    imp.add_argument("--weights", help="local weights file of the base backbone")
    imp.add_argument("--random-init", action="store_true", help="random base weights (tests only)")
    imp.add_argument("--backbone-option", action="append", metavar="KEY=VALUE", help="backbone factory option")
    imp.add_argument("--registers", type=int, default=16,
                     help="register tokens in FILE (default 16, the authors' code)")
    imp.add_argument("--resolution", type=int, default=448,
                     help="official-clip: the training size of the stored positional table "
                          "(default 448, the authors' code)")
    imp.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    imp.set_defaults(handler=handle_import)

    push = sub.add_parser(
        "push", help="upload an adapter folder to the Hugging Face hub with a generated model card",
        description="Upload DIR's adapter.safetensors + adapter.json (and any result files in DIR, under results/) "
        "to <user>/<repo> with a generated README.md (base backbone, weights sha256, student, recipe, "
        "diagnostics, results). Token: --token, HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT.")
    push.add_argument("folder", type=Path, help="the adapter folder (written by distill or adapter import)")
    push.add_argument("--repo", required=True, help="<user>/<repo> (or <user>/<repo>/<folder>) on the hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--token", help="hub token (default: HF_TOKEN or the saved login)")
    push.add_argument("--message", help="commit message")
    push.add_argument("--dry-run", action="store_true", help="print the model card and the file list; upload nothing")
    push.set_defaults(handler=handle_push)


def handle_import(args: argparse.Namespace) -> int:
    from phreg_bench.backbones.build import build_backbone
    from phreg_bench.checkpoints.official import import_official
    from phreg_bench.cli._options import parse_assignments

    if not args.file.is_file():
        raise CliError(f"{args.file} does not exist; pass the authors' state dict file")
    if args.registers < 1:
        raise CliError("--registers must be at least 1 (the authors' students have 16)")
    if (args.out / "adapter.safetensors").exists() and not args.overwrite:
        raise CliError(f"{args.out} already holds an adapter; pass --overwrite to replace it")
    backbone = build_backbone(args.backbone, weights=args.weights, random_init=args.random_init,
                              **parse_assignments(args.backbone_option, "--backbone-option"))
    result = import_official(args.format, args.file, backbone, args.out, registers=args.registers,
                             resolution=args.resolution)
    console.print(f"imported {args.format} student {args.file.name} onto {backbone.name} "
                  f"({result.info['frozen_tensors_checked']} frozen tensors match the base weights): "
                  f"{result.adapter_path} + {result.sidecar_path.name}")
    console.print(f"run it: phreg-bench run --backbone {args.backbone} --adapter {result.adapter_path} --tasks ...")
    return 0


def handle_push(args: argparse.Namespace) -> int:
    from phreg_bench.checkpoints.sharing import push_adapter

    plan, url = push_adapter(args.folder, args.repo, private=args.private, token=args.token,
                             commit_message=args.message, dry_run=args.dry_run)
    if args.dry_run:
        print(plan.card)
        console.print(f"dry run: would upload {', '.join(plan.files)} to {args.repo}")
        return 0
    console.print(f"pushed {', '.join(plan.files)} to {args.repo}: {url}")
    console.print(f"use it: phreg-bench run --backbone <base> --adapter hf-hub:{args.repo} --tasks ...")
    return 0
