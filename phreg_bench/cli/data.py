"""`phreg-bench data`: check dataset folders and convert labels to the layouts the readers expect."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from phreg_bench.cli import CliError, console

SHOW = 10  # files listed per category before "... and N more"


def _task_splits(spec, protocol: str | None) -> list[tuple[str, str, dict]]:
    """Every ``(dataset, split, check options)`` a run of ``spec`` reads (probe tasks also read a train split)."""
    from phreg_bench.registries import TASK_FAMILIES

    family = TASK_FAMILIES.get(spec.family)()
    if hasattr(family, "data_splits"):
        return family.data_splits(spec, protocol)
    return [(spec.dataset, spec.split, {})]


def _datasets_for(name: str, split: str | None, protocol: str | None = None) -> list[tuple[str, str, dict]]:
    """``(dataset, split, check options)`` for a task name, a short task name or a dataset name.

    A task gives every split its run reads (the evaluated split, and a probe's training split with the
    protocol's source); ``split`` replaces them all with that one split.
    """
    from phreg_bench.registries import DATASETS, TASKS

    if name in TASKS:
        specs = [TASKS.get(name)]
    else:
        specs = [e.target for e in TASKS if e.metadata.get("short_name") == name and hasattr(e.target, "dataset")]
        specs.sort(key=lambda spec: spec.name)
    if specs:
        found = [(spec.dataset, split, {}) for spec in specs] if split else \
            [item for spec in specs for item in _task_splits(spec, protocol)]
        unique: dict[tuple, tuple[str, str, dict]] = {}
        for dataset, part, options in found:
            unique.setdefault((dataset, part, tuple(sorted(options.items()))), (dataset, part, options))
        return list(unique.values())
    if name in DATASETS:
        return [(DATASETS.canonical(name), split or "val", {})]
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
    for dataset, split, options in _datasets_for(args.task, args.split, args.protocol):
        reader = DATASETS.get(dataset)
        report = reader.check(args.data_root, split, deep=args.deep, **options)
        expected = "?" if report.expected is None else str(report.expected)
        status = "[green]ok[/green]" if report.ok else "[red]incomplete[/red]"
        console.print(f"{reader.name} ({report.split}) in {report.folder}: {report.found} of {expected} samples found "
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
    if counts["kept"]:
        console.print(f"  note: the {counts['kept']} kept files were not rewritten or checked; if `phreg-bench data "
                      "check --deep` reports them as bad, rerun this command with --overwrite", highlight=False)
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
    check.add_argument("--split", help="split to check (default: every split the task reads — a probe task's "
                       "train split too — or val for a dataset name)")
    check.add_argument("--protocol", help="protocol preset whose splits are checked (default: each task's own)")
    check.add_argument("--deep", action="store_true", help="also read every image and label (slow)")
    check.set_defaults(handler=handle_check)

    for kind, help_text in (
        ("object", "write COCO-Object *_instanceTrainIds.png from COCO-Stuff164k raw annotations"),
        ("stuff", "write COCO-Stuff164k *_labelTrainIds.png from the raw stuffthingmaps annotations"),
        ("cityscapes", "write Cityscapes *_gtFine_labelTrainIds.png from *_gtFine_labelIds.png"),
    ):
        name = f"convert-coco-{kind}" if kind != "cityscapes" else "convert-cityscapes"
        convert = commands.add_parser(name, help=help_text, description=help_text + ". Existing outputs are kept "
                                      "(unchecked) unless --overwrite.")
        convert.add_argument("--data-root", type=_data_root, default=default_root,
                             help="datasets folder (default: $PHREG_DATA)")
        convert.add_argument("--splits", default="val,train", help="comma-separated splits (default: val,train)")
        convert.add_argument("--overwrite", action="store_true",
                             help="rewrite outputs that already exist (e.g. ones `data check --deep` flagged)")
        if kind != "cityscapes":
            convert.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
        convert.set_defaults(handler=handle_convert, convert_kind=kind)
    parser.set_defaults(handler=lambda args: parser.print_help() or 0)
