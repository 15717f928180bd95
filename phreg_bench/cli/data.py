"""`phreg-bench data`: check dataset folders and convert labels to the layouts the readers expect."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from phreg_bench.cli import CliError, console

SHOW = 10  # files listed per category before "... and N more"


def _datasets_for(name: str, split: str | None) -> list[tuple[str, str]]:
    """``(dataset, split)`` pairs for a task name, a short task name or a dataset name."""
    from phreg_bench.registries import DATASETS, TASKS

    if name in TASKS:
        spec = TASKS.get(name)
        return [(spec.dataset, split or spec.split)]
    matches = [e.target for e in TASKS if e.metadata.get("short_name") == name and hasattr(e.target, "dataset")]
    if matches:
        return sorted({(spec.dataset, split or spec.split) for spec in matches})
    if name in DATASETS:
        return [(DATASETS.canonical(name), split or "val")]
    TASKS.canonical(name)  # raises "unknown task ... did you mean"
    return []


def _print_list(title: str, items: list[str], style: str) -> None:
    if not items:
        return
    console.print(f"  [{style}]{title} ({len(items)}):[/{style}]")
    for item in items[:SHOW]:
        console.print(f"    {item}", soft_wrap=True, highlight=False)
    if len(items) > SHOW:
        console.print(f"    ... and {len(items) - SHOW} more")


def handle_check(args: argparse.Namespace) -> int:
    from phreg_bench.registries import DATASETS

    all_ok = True
    for dataset, split in _datasets_for(args.task, args.split):
        reader = DATASETS.get(dataset)
        report = reader.check(args.data_root, split, deep=args.deep)
        expected = "?" if report.expected is None else str(report.expected)
        status = "[green]ok[/green]" if report.ok else "[red]incomplete[/red]"
        console.print(f"{reader.name} ({split}) in {report.folder}: {report.found} of {expected} samples found "
                      f"— {status}", highlight=False)
        _print_list("missing", report.missing, "red")
        _print_list("extra (no matching image)", report.extra, "yellow")
        _print_list("problems", report.problems, "red")
        if report.fix and not report.ok:
            console.print(f"  [bold]fix:[/bold] {report.fix}", soft_wrap=True, highlight=False)
        all_ok &= report.ok
    return 0 if all_ok else 1


def _progress_callback(progress, description: str):
    task = progress.add_task(description, total=None, info="")

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return update


def handle_convert(args: argparse.Namespace) -> int:
    from phreg_bench.progress import make_progress

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    with make_progress(console=console, transient=True) as progress:
        callback = _progress_callback(progress, args.convert_kind)
        if args.convert_kind == "cityscapes":
            from phreg_bench.datasets.cityscapes import convert_cityscapes

            counts = convert_cityscapes(args.data_root, splits, overwrite=args.overwrite, progress=callback)
        else:
            from phreg_bench.datasets.coco import convert_coco

            counts = convert_coco(args.data_root, args.convert_kind, splits, workers=args.workers,
                                  overwrite=args.overwrite, progress=callback)
    console.print(f"{args.convert_kind}: {counts['converted']} label files written, "
                  f"{counts['kept']} already present (kept)")
    return 0


def _data_root(value: str | None) -> Path:
    if value is None:
        raise CliError("no data folder: pass --data-root DIR or set PHREG_DATA")
    return Path(value)


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check dataset folders, convert labels",
                                   description="Check dataset folders and convert labels to the expected layout.")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    default_root = os.environ.get("PHREG_DATA")

    check = commands.add_parser("check", help="report missing / extra files and sample counts of a task's data")
    check.add_argument("task", help="task (ovseg/voc21), short task name (voc) or dataset name (ade20k)")
    check.add_argument("--data-root", type=_data_root, default=default_root,
                       help="datasets folder (default: $PHREG_DATA)")
    check.add_argument("--split", help="split to check (default: the task's split, or val)")
    check.add_argument("--deep", action="store_true", help="also read every image and label (slow)")
    check.set_defaults(handler=handle_check)

    for kind, help_text in (
        ("object", "write COCO-Object *_instanceTrainIds.png from COCO-Stuff164k raw annotations"),
        ("stuff", "write COCO-Stuff164k *_labelTrainIds.png from the raw stuffthingmaps annotations"),
        ("cityscapes", "write Cityscapes *_gtFine_labelTrainIds.png from *_gtFine_labelIds.png"),
    ):
        name = f"convert-coco-{kind}" if kind != "cityscapes" else "convert-cityscapes"
        convert = commands.add_parser(name, help=help_text, description=help_text + ". Existing outputs are kept.")
        convert.add_argument("--data-root", type=_data_root, default=default_root,
                             help="datasets folder (default: $PHREG_DATA)")
        convert.add_argument("--splits", default="val,train", help="comma-separated splits (default: val,train)")
        convert.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
        if kind != "cityscapes":
            convert.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
        convert.set_defaults(handler=handle_convert, convert_kind=kind)
    parser.set_defaults(handler=lambda args: parser.print_help() or 0)
