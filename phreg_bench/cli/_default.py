"""`phreg-bench run` with no arguments: the built-in default, offline on a CPU in a few minutes.

1. The synthetic world and the planted-artifact ViT (:mod:`phreg_bench.synthetic.pipeline`): a short PH-Reg
   distillation, the proof table (outlier rate, probe mIoU, depth RMSE for raw / TTA / PH-Reg / the
   artifact-free twin) and the figures.
2. The benchmark side: ``planted-vit`` × {raw, tta, phreg (the adapter just trained), ttr (the register
   neurons just found)} and ``planted-vit-twin`` × raw on the built-in task, one result file each, then the
   leaderboard.

Everything is written under ``--results-dir``; finished work is skipped on a rerun, and a killed run
resumes (the distillation from its checkpoint, the tasks from the first missing result).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from phreg_bench.cli import add_row, console, make_table, note, print_table, say

TEACHER, TWIN = "planted-vit", "planted-vit-twin"
DEFAULT_TASKS = ["synthetic/segmentation"]


def run_default(args: argparse.Namespace, device: torch.device) -> int:
    """The built-in default on ``device`` (resolved from ``--device`` by the caller); exit status 0 or 1."""
    from phreg_bench.backbones.build import build_backbone
    from phreg_bench.cli._options import resolve_batch_size
    from phreg_bench.leaderboard import build_all
    from phreg_bench.progress import make_progress, plain_logger
    from phreg_bench.results.records import format_metric
    from phreg_bench.runner import RunRequest, run
    from phreg_bench.synthetic.pipeline import run_synthetic_proof
    from phreg_bench.tasks.base import RunContext

    results_dir: Path = args.results_dir
    leaderboard_dir: Path = args.leaderboard_dir or results_dir / "leaderboard"
    proof_dir = results_dir / "synthetic-proof"
    if device.type == "cpu":
        torch.set_num_threads(1)  # the models are tiny: a second thread costs more than it gives (measured ~5x)
    note(f"built-in default: PH-Reg on the planted-artifact ViT, synthetic world, device {device}")
    runs = []
    with make_progress(console=console, transient=True) as progress:
        log = plain_logger(progress)
        summary = run_synthetic_proof(proof_dir, progress, log=log)
        adapter = str(Path(summary["adapter"]).parent)
        ctx = RunContext(cache_dir=args.cache_dir, device=device, precision=args.precision,
                         batch_size=resolve_batch_size(args.batch_size, device), num_workers=args.num_workers,
                         seed=args.seed, progress=progress)
        teacher, twin = build_backbone(TEACHER), build_backbone(TWIN)
        jobs = [(teacher, "raw", {}), (teacher, "tta", {}), (teacher, "phreg", {"adapter": adapter}),
                (teacher, "ttr", {"neurons": summary["ttr_neurons"]}), (twin, "raw", {})]
        for backbone, method, options in jobs:
            request = RunRequest(backbone=backbone.name, method=method, method_options=options,
                                 tasks=DEFAULT_TASKS, results_dir=results_dir, overwrite=args.overwrite)
            runs += [(backbone.name, method, r) for r in run(request, ctx, log=log, backbone=backbone)]
    written = build_all(results_dir, leaderboard_dir)
    failed = sum(r.status == "failed" for _, _, r in runs)

    table = make_table("PH-Reg on the planted-artifact ViT (synthetic world)",
                       ("model", "outliers %", "probe mIoU", "depth RMSE"))
    for column in table.columns[1:]:
        column.justify = "right"
    for row in summary["rows"]:
        add_row(table, row["name"], f"{row['outlier_rate']:.2f}", f"{row['miou']:.1f}", f"{row['depth_rmse']:.3f}")
    print_table(table)
    for backbone_name, method, r in runs:  # every result file, on standard output with the summary
        value = "" if r.value is None else f" {r.main_metric} = {format_metric(r.value)}"
        status = "already done" if r.status == "skipped" and r.path else r.status
        say(f"result:      {backbone_name} × {method} {r.task} {status}{value} ", r.path or r.error or "")
    say("results:     ", results_dir)
    say("proof table: ", summary["table_md"])
    say("adapter:     ", summary["adapter"])
    say("ttr neurons: ", summary["ttr_neurons"])
    for path in summary["figures"]:
        say("figure:      ", path)
    for path in written:
        say("leaderboard: ", path)
    return 1 if failed else 0
