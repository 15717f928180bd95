"""The built-in default's PH-Reg part: distil the planted-artifact ViT, evaluate it, draw the figures.

:func:`run_synthetic_proof` is what ``phreg-bench run`` (no arguments) calls before it runs the leaderboard tasks:

1. builds ``planted-vit`` (artifacts on) and ``planted-vit-twin`` (same weights, artifacts off);
2. distils a PH-Reg student (16 registers, 10-view TTA targets, official unlock set) on 128 synthetic
   scenes for 200 steps — resumable: an interrupted run continues from its checkpoint, a finished one is
   not redone — and writes the adapter to ``<out>/phreg-adapter/adapter.safetensors`` (+ ``.json``);
3. evaluates raw teacher, teacher + TTA, PH-Reg (loaded back from the adapter through the ``phreg``
   method), test-time registers (the ``ttr`` method with the register neurons found on the distillation
   scenes, written to ``<out>/ttr-neurons.json``) and the twin: high-norm outlier rate, linear-probe mIoU
   and depth RMSE, cosine to the twin;
4. writes ``<out>/figures/`` (side-by-side PCA / patch-norm panels of three scenes and the norm histogram),
   ``<out>/summary.json`` and ``<out>/proof_table.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phreg_bench.results.store import write_json_atomic  # one strict, atomic JSON writer
from phreg_bench.synthetic.proof import (
    VARIANTS,
    ProofConfig,
    Row,
    build_world,
    distill_variant,
    evaluate_in,
    find_ttr_neurons,
    finder_quality,
    format_table,
    plain,
    register_share,
    teacher_rows,
    ttr_row,
)
from phreg_core.atomic import write_text_atomic
from phreg_core.hashing import file_sha256

FULL = "PH-Reg (full)"
FIGURE_SCENES = 3  # evaluation scenes drawn side by side
DISPLAY_SIZE = 160  # the input panel shows the same scene rendered sharper than the model's input


# The sources whose code computes the proof table: a change to any of them recomputes it.
_SOURCES = ("synthetic/pipeline.py", "synthetic/proof.py", "synthetic/scenes.py", "synthetic/closed_form.py",
            "synthetic/planted.py", "methods/tta.py", "methods/phreg.py")


def _file_sha256(path: Path) -> str | None:
    return file_sha256(path) if path.is_file() else None


def proof_inputs(out: Path, config: ProofConfig) -> dict[str, Any]:
    """Everything the proof table depends on: the config, the adapter's tensors and the code that computes it."""
    from phreg_bench import __version__

    package = Path(__file__).resolve().parents[1]
    return {"config": json.loads(json.dumps(asdict(config))), "version": __version__,
            "adapter_sha256": _file_sha256(out / "phreg-adapter" / "adapter.safetensors"),
            "sources": {name: _file_sha256(package / name) for name in _SOURCES}}


def finished_summary(out: Path, config: ProofConfig, figures: bool) -> dict[str, Any] | None:
    """The summary of a finished run with the same inputs whose files are all there, else ``None``."""
    path = out / "summary.json"
    try:
        summary = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("inputs") != proof_inputs(out, config):
        return None
    if summary["inputs"]["adapter_sha256"] is None or (figures and not summary.get("figures")):
        return None
    files = [summary.get("table_md"), summary.get("adapter"), *summary.get("figures", [])]
    if not all(isinstance(f, str) and Path(f).is_file() for f in files):
        return None
    return summary


def draw_figures(models: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]], images: torch.Tensor,
                 indices: list[int], folder: Path, seed: int = 0) -> list[Path]:
    """Comparison panels of the first :data:`FIGURE_SCENES` images and a norm histogram over all of them."""
    from phreg_bench.synthetic.scenes import render
    from phreg_bench.viz import Panel, comparison_figure, norm_histogram

    paths = []
    with torch.inference_mode():
        grids = {name: fn(images).float() for name, fn in models}
    for i in range(min(FIGURE_SCENES, len(images))):
        panels = [Panel(name, grid[i]) for name, grid in grids.items()]
        display = render(indices[i], DISPLAY_SIZE, seed).image
        paths.append(comparison_figure(display, panels, folder / f"compare_scene{indices[i]}.png",
                                       title=f"synthetic scene {indices[i]}: same planted ViT, three treatments, "
                                             "and the artifact-free twin"))
    norms = {name: grid.norm(dim=1).flatten().numpy() for name, grid in grids.items()}
    paths.append(norm_histogram(norms, folder / "norm_histogram.png",
                                title=f"patch-token norms on {len(images)} evaluation scenes"))
    return paths


def run_synthetic_proof(out_dir: str | os.PathLike, progress=None, *, config: ProofConfig | None = None,
                log: Callable[[str], None] = print, figures: bool = True, threads: int | None = 1) -> dict[str, Any]:
    """Distil, evaluate and draw (see the module docstring); returns the summary that is also written.

    ``progress`` is an optional rich ``Progress`` (the distillation shows a bar on it); ``log`` prints
    one line per stage. ``threads`` CPU threads are used meanwhile (default 1: this 64-wide ViT runs
    several times faster on one thread than on two busy cores; ``None`` keeps torch's setting). Summary
    keys: ``rows`` (list of dicts), ``table`` (Markdown), ``adapter``, ``figures``, ``summary_json``,
    ``table_md``, ``seconds``, ``config``, ``classes``, ``inputs`` (what the table depends on) and
    ``reused`` (True when a finished run with the same inputs was read back instead of recomputed).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_synthetic_proof(Path(out_dir), progress, config or ProofConfig(variants=(FULL,)), log, figures)
    finally:
        torch.set_num_threads(previous)


def _run_synthetic_proof(out: Path, progress, config: ProofConfig, log: Callable[[str], None],
                 figures: bool) -> dict[str, Any]:
    from phreg_bench.methods.catalogue import METHODS
    from phreg_bench.methods.ttr import write_neurons
    from phreg_bench.synthetic.scenes import CLASS_NAMES

    finished = finished_summary(out, config, figures)
    if finished is not None:
        log(f"PH-Reg proof: inputs unchanged since the finished run; table read back from {finished['table_md']}")
        return {**finished, "reused": True}
    start = time.perf_counter()
    world = build_world(config)
    rows: list[Row] = teacher_rows(world, config)
    raw_rate = rows[0].outlier_rate
    log(f"planted-vit: {raw_rate:.2f}% high-norm patch tokens; after {config.views}-view TTA "
        f"{rows[1].outlier_rate:.2f}%")

    adapter_dir = out / "phreg-adapter"
    _, result = distill_variant(world.teacher, world.scenes["distill"].images, registers=config.registers,
                                denoise=VARIANTS[FULL][1], config=config, out_dir=adapter_dir, progress=progress,
                                description="PH-Reg distillation")
    if result.losses:
        log(f"PH-Reg: {result.steps} steps of distillation ({result.seconds:.0f}s), adapter in {adapter_dir}")
    else:
        log(f"PH-Reg: distillation already complete ({result.steps} steps), adapter in {adapter_dir}")
    phreg = METHODS.get("phreg")(world.teacher, adapter=str(adapter_dir)).eval()  # the benchmark's loading path
    row = evaluate_in(world, FULL, lambda x: phreg.forward_tokens(x)[0].patches, raw_rate)
    row.register_share = register_share(phreg.student, world.scenes["eval"].images)
    row.seconds, row.final_loss = result.seconds, result.recent_loss
    rows.append(row)
    ttr_neurons = out / "ttr-neurons.json"
    document = find_ttr_neurons(world)
    write_neurons(ttr_neurons, document)
    quality = finder_quality(document, world.teacher)
    rows.append(ttr_row(world, ttr_neurons, raw_rate))
    log(f"test-time registers: {quality['top_k']} neurons found, planted ones recovered with recall "
        f"{quality['recall_at_k']:.2f} (R-precision {quality['r_precision']:.2f}); {rows[-1].outlier_rate:.2f}% "
        "outliers")
    rows.append(evaluate_in(world, "twin (no artifacts)", plain(world.twin), raw_rate))
    table = format_table(rows)

    figure_paths: list[Path] = []
    if figures:
        from phreg_bench.methods.tta import build as build_tta

        tta = build_tta(world.teacher, views=config.views, seed=config.seed)
        models = [("planted-vit (raw)", plain(world.teacher)),
                  (f"+ TTA ({config.views} views)", lambda x: tta.forward_tokens(x)[0].patches),
                  ("+ PH-Reg", lambda x: phreg.forward_tokens(x)[0].patches),
                  ("twin (no artifacts)", plain(world.twin))]
        evaluation = world.scenes["eval"]
        indices = list(range(100_000, 100_000 + len(evaluation.images)))
        figure_paths = draw_figures(models, evaluation.images, indices, out / "figures", config.scene_seed)

    summary = {
        "rows": [r.to_dict() for r in rows],
        "table": table,
        "adapter": str(adapter_dir / "adapter.safetensors"),
        "ttr_neurons": str(ttr_neurons),
        "ttr_finder": quality,
        "figures": [str(p) for p in figure_paths],
        "summary_json": str(out / "summary.json"),
        "table_md": str(out / "proof_table.md"),
        "seconds": time.perf_counter() - start,
        "config": asdict(config),
        "classes": list(CLASS_NAMES),
        "inputs": proof_inputs(out, config),
        "reused": False,
    }
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "proof_table.md", table + "\n")
    return summary


def headline(summary: dict[str, Any]) -> dict[str, float]:
    """The numbers a one-line summary needs: outlier reduction and probe changes of PH-Reg vs raw."""
    rows = {r["name"]: r for r in summary["rows"]}
    raw, full, twin = rows["teacher (raw)"], rows[FULL], rows["twin (no artifacts)"]
    return {
        "outliers_raw_pct": raw["outlier_rate"],
        "outliers_phreg_pct": full["outlier_rate"],
        "outlier_reduction_pct": float(full["outlier_reduction"]),
        "miou_raw": raw["miou"], "miou_phreg": full["miou"], "miou_twin": twin["miou"],
        "rmse_raw": raw["depth_rmse"], "rmse_phreg": full["depth_rmse"], "rmse_twin": twin["depth_rmse"],
        "register_share_pct": float(np.nan_to_num(full["register_share"] or 0.0)),
    }
