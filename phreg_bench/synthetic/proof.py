"""The proof in numbers: PH-Reg on the planted-artifact ViT, against the truth of its artifact-free twin.

Rows (the paper's Table 3 structure, plus the two references that only a synthetic world has):

* ``teacher (raw)``          the planted ViT as it is ("Vanilla");
* ``teacher + TTA``          PH-Reg's 10-view shift/flip denoising at test time ("Denoising only"); this is
                             the distillation target;
* ``distill, no reg, no denoise`` / ``distill, reg, no denoise`` / ``distill, no reg, denoise`` and
  ``PH-Reg (full)``          students distilled from the raw or the denoised teacher, with 0 or 16 registers;
* ``test-time registers``    the benchmark's ``ttr`` method (Jiang et al., NeurIPS'25): training-free; its
                             register neurons are found on the distillation scenes with the reference
                             code's defaults (outlier norm > 30 at the last block, top 10 neurons), and the
                             finder is scored against the planted neurons (:func:`ttr_row`);
* ``twin (no artifacts)``    the same weights with the artifact mechanism off: the artifact-free reference.

Columns: the high-norm outlier rate of the final patch tokens (``phreg_core.diagnostics``: norm > 2× the
image's median), its reduction against the raw teacher, the closed-form linear probes' segmentation mIoU
and depth RMSE (:mod:`phreg_bench.synthetic.closed_form`), the worst-1 % cosine of a model's patch tokens to the
twin's, and the share of the planted neurons' firing that lands on the student's registers.

The twin is the truth for the artifacts, not an upper bound for the probes: the 10-view average (and a
student distilled from it) is also a shift/flip ensemble, which the probes like, so TTA and PH-Reg can
close the raw → twin gap and go past it.

Images come from three disjoint index ranges of the scene generator: distillation (unlabelled, from 0),
probe training (from 10 000) and evaluation (from 100 000).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from phreg_bench.synthetic.scenes import CLASS_NAMES, SceneBatch, render_batch
from phreg_core.recipe import DEFAULT_REGISTERS, Recipe

DISTILL_START, PROBE_START, EVAL_START = 0, 10_000, 100_000
TTR = "test-time registers"

# Table 3 rows: name -> (registers?, denoised target?)
VARIANTS: dict[str, tuple[bool, bool]] = {
    "distill, no reg, no denoise": (False, False),
    "distill, reg, no denoise": (True, False),
    "distill, no reg, denoise": (False, True),
    "PH-Reg (full)": (True, True),
}


@dataclass(frozen=True)
class ProofConfig:
    """Sizes and the short distillation recipe of the synthetic proof.

    The paper distils for 100 epochs at lr 1e-4…3e-4 (Tables S.2/S.3); a few hundred steps on a CPU need
    a larger learning rate, so this tiny recipe uses AdamW 5e-3 → 2e-3 (per-epoch exponential decay, as the
    trainer does), batch 8, 200 steps; every other setting is PH-Reg's (16 registers, 10 views, 15 %
    shifts, official unlock set, loss (1 − cos) + MSE, weight decay 1e-2).
    """

    scene_seed: int = 0
    num_distill: int = 128
    num_probe: int = 128
    num_eval: int = 64
    steps: int = 200
    batch_size: int = 8
    lr: float = 5e-3
    lr_end: float = 2e-3
    registers: int = DEFAULT_REGISTERS  # PH-Reg App. B.1
    views: int = Recipe.default("views")  # PH-Reg §3.1
    seed: int = 0
    variants: tuple[str, ...] = tuple(VARIANTS)
    backbone_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    name: str
    outlier_rate: float  # percent of patch tokens
    outlier_reduction: float | None  # percent, against the raw teacher
    miou: float
    depth_rmse: float
    cos_to_twin_p01: float  # the worst-1 % patch cosine to the twin's tokens
    register_share: float | None  # percent of the planted neurons' firing on registers
    seconds: float = 0.0  # distillation time (students)
    final_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def distill_variant(backbone, images: Tensor, *, registers: int, denoise: bool, config: ProofConfig,
                    out_dir: str | Path | None = None, progress=None, description: str = "distil",
                    chunk: int = 25, target_cache: str | Path | None = None):
    """Distil a PH-Reg student of ``backbone`` on ``images``; returns ``(student, DistillResult)``.

    ``denoise=False`` uses one view (the unmodified image) as the target: the raw teacher output. The
    run goes in chunks of ``chunk`` steps, each resuming the previous checkpoint (the trainer's exact
    resume), which drives ``progress`` (a rich ``Progress``) and makes an interrupted run continue where
    it stopped. ``out_dir`` keeps the checkpoints, the teacher-target cache, ``log.jsonl`` and the adapter
    (``adapter.safetensors`` + ``adapter.json``); without it they live in a temporary folder.
    ``target_cache`` names another folder for the denoised targets (variants with the same teacher, views
    and seed share them: the cache is content-addressed).
    """
    from phreg_core.data import TensorImageDataset
    from phreg_core.recipe import RunOptions
    from phreg_core.student import Student
    from phreg_core.teacher import default_teacher
    from phreg_core.trainer import distill

    teacher = default_teacher(backbone.vision)
    student = Student(backbone.vision, registers, unlock="official", seed=config.seed)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    dataset = TensorImageDataset(images)
    with tempfile.TemporaryDirectory(prefix="phreg-distill-") as scratch:
        folder = Path(out_dir) if out_dir is not None else Path(scratch)
        recipe = Recipe(epochs=max(1, math.ceil(config.steps / steps_per_epoch)), batch_size=config.batch_size,
                        lr=config.lr, lr_end=config.lr_end, views=config.views if denoise else 1, seed=config.seed,
                        resolution=images.shape[-1])
        options = RunOptions(device="cpu", progress=False, out_dir=str(folder), resume=True, checkpoint_every=0,
                             keep_checkpoints=1, save_adapter=False,
                             cache_targets=str(target_cache or folder / "targets") if denoise else None)
        task = progress.add_task(description, total=config.steps, info="") if progress is not None else None
        seconds, result = 0.0, None
        for stop in range(min(chunk, config.steps), config.steps + chunk, chunk):
            stop = min(stop, config.steps)
            last = stop == config.steps
            result = distill(teacher, student, dataset, recipe,
                             replace(options, max_steps=stop, save_adapter=last and out_dir is not None),
                             base_name=backbone.name, base_weights_sha256=backbone.identity.weights_sha256)
            seconds += result.seconds
            if task is not None:
                loss = "-" if result.final_loss is None else f"loss {result.final_loss:.3f}"
                progress.update(task, completed=result.steps, info=loss)
            if last:
                break
        if task is not None:
            progress.remove_task(task)
    assert result is not None
    result.seconds = seconds
    return student.eval(), result


@torch.inference_mode()
def _features(model_fn: Callable[[Tensor], Tensor], images: Tensor, batch: int = 64) -> Tensor:
    return torch.cat([model_fn(images[i : i + batch]).float() for i in range(0, len(images), batch)])


def register_share(student, images: Tensor) -> float | None:
    """Percent of the planted neurons' firing that lands on ``student``'s registers."""
    from phreg_bench.synthetic.planted import firing_maps

    if student.num_registers == 0:
        return None
    with torch.inference_mode():
        student(images)
    maps = firing_maps(student.vision)
    if not maps:
        return None
    firing = maps[0]  # [B, N-1]: registers first (prefix placement), then patches
    return 100.0 * float(firing[:, : student.num_registers].sum() / firing.sum().clamp(min=1e-12))


def evaluate(name: str, model_fn: Callable[[Tensor], Tensor], probe: SceneBatch, evaluation: SceneBatch,
             twin_eval: Tensor, raw_rate: float | None) -> Row:
    """Every column of one row, from a function ``normalised images -> patch grid``."""
    from phreg_bench.synthetic.closed_form import depth_probe, segmentation_probe
    from phreg_core.diagnostics import outlier_rate
    from phreg_core.losses import token_cosine

    train_feats, eval_feats = _features(model_fn, probe.images), _features(model_fn, evaluation.images)
    rate = 100.0 * outlier_rate(eval_feats)
    seg = segmentation_probe(train_feats, probe.labels, eval_feats, evaluation.labels, len(CLASS_NAMES))
    depth = depth_probe(train_feats, probe.depth, eval_feats, evaluation.depth)
    cos = token_cosine(twin_eval, eval_feats).flatten()
    reduction = None if raw_rate in (None, 0.0) else 100.0 * (1.0 - rate / raw_rate)
    return Row(name, rate, reduction, seg["mIoU"], depth["RMSE"], float(torch.quantile(cos, 0.01)), None)


@dataclass
class ProofResult:
    rows: list[Row]
    config: ProofConfig
    seconds: float
    ttr_finder: dict[str, Any] | None = None  # how well the register-neuron finder recovered the planted ones

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "config": asdict(self.config), "seconds": self.seconds,
                "ttr_finder": self.ttr_finder}


@dataclass
class World:
    """The teacher, its twin and the three scene sets of one proof run."""

    teacher: Any  # Backbone with the artifact mechanism on
    twin: Any  # the same weights, mechanism off
    scenes: dict[str, SceneBatch]  # "distill", "probe", "eval"; images normalised for the teacher
    twin_eval: Tensor  # the twin's patch tokens on the evaluation scenes


def plain(backbone) -> Callable[[Tensor], Tensor]:
    """``images -> final normalised patch grid`` of a backbone run as it is."""
    return lambda images: backbone.forward_tokens(images)[0].patches


def build_world(config: ProofConfig) -> World:
    from phreg_bench.synthetic.planted import build_planted_vit

    teacher = build_planted_vit(**config.backbone_options)
    twin = build_planted_vit(artifacts=False, **config.backbone_options)
    size = teacher.native_resolution[0]
    scenes = {}
    for name, first, count in (("distill", DISTILL_START, config.num_distill), ("probe", PROBE_START, config.num_probe),
                               ("eval", EVAL_START, config.num_eval)):
        batch = render_batch(range(first, first + count), size, config.scene_seed)
        scenes[name] = replace(batch, images=teacher.normalize(batch.images))
    return World(teacher, twin, scenes, _features(plain(twin), scenes["eval"].images))


def evaluate_in(world: World, name: str, model_fn: Callable[[Tensor], Tensor], raw_rate: float | None) -> Row:
    return evaluate(name, model_fn, world.scenes["probe"], world.scenes["eval"], world.twin_eval, raw_rate)


def teacher_rows(world: World, config: ProofConfig) -> list[Row]:
    """``teacher (raw)`` and ``teacher + TTA`` (the benchmark's ``tta`` method, PH-Reg's 10 views)."""
    from phreg_bench.methods.tta import build as build_tta

    raw = evaluate_in(world, "teacher (raw)", plain(world.teacher), None)
    tta = build_tta(world.teacher, views=config.views, seed=config.seed)
    denoised = evaluate_in(world, f"teacher + TTA ({config.views} views)",
                           lambda x: tta.forward_tokens(x)[0].patches, raw.outlier_rate)
    return [raw, denoised]


def find_ttr_neurons(world: World, batch: int = 64) -> dict[str, Any]:
    """Register neurons of the planted teacher, found on the (unlabelled) distillation scenes with the reference
    code's default settings; returns the neurons document that ``ttr find`` would write."""
    from phreg_bench.methods.ttr import neurons_document
    from phreg_core.ttr import FinderSettings, NeuronScorer

    settings = FinderSettings()
    scorer = NeuronScorer(world.teacher.vision, settings)
    images = world.scenes["distill"].images
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            scorer.update(images[start : start + batch])
    source = {**settings.to_dict(), "num_images": len(images), "resolution": images.shape[-1],
              "data": f"synthetic scenes {DISTILL_START}..{DISTILL_START + len(images) - 1}"}
    return neurons_document(world.teacher, scorer, source)


def finder_quality(document: dict[str, Any], backbone) -> dict[str, Any]:
    """Precision / recall of the found neurons against the planted ones (``register_neuron_indices``)."""
    from phreg_bench.synthetic.planted import register_neuron_indices

    truth = {(layer, unit) for layer, units in register_neuron_indices(backbone.vision.model).items() for unit in units}
    found = [(row["layer"], row["neuron"]) for row in document["neurons"]]
    ranked = [(row["layer"], row["neuron"]) for row in document["candidates"]]
    hits = len(truth & set(found))
    return {"planted": sorted(truth), "found": found, "top_k": len(found),
            "precision_at_k": hits / len(found), "recall_at_k": hits / len(truth),
            "r_precision": len(truth & set(ranked[: len(truth)])) / len(truth)}


def ttr_row(world: World, neurons: str | Path | dict[str, Any], raw_rate: float | None) -> Row:
    """The ``test-time registers`` row: the benchmark's ``ttr`` method with ``neurons`` (a file or document);
    its last column is the share of the planted neurons' firing on the appended register."""
    from phreg_bench.methods.catalogue import METHODS
    from phreg_bench.methods.ttr import write_neurons
    from phreg_bench.synthetic.planted import firing_maps

    if isinstance(neurons, dict):
        with tempfile.TemporaryDirectory(prefix="phreg-ttr-") as folder:
            path = write_neurons(Path(folder) / "neurons.json", neurons)
            model = METHODS.get("ttr")(world.teacher, neurons=str(path))
    else:
        model = METHODS.get("ttr")(world.teacher, neurons=str(neurons))
    row = evaluate_in(world, TTR, lambda x: model.forward_tokens(x)[0].patches, raw_rate)
    registers = model.intervention.registers
    with torch.inference_mode():
        model.forward_tokens(world.scenes["eval"].images)
    firing = firing_maps(world.teacher.vision)[0]  # [B, N-1]: patches, then the appended registers
    row.register_share = 100.0 * float(firing[:, -registers:].sum() / firing.sum().clamp(min=1e-12))
    return row


def run_proof(config: ProofConfig = ProofConfig(), *, log: Callable[[str], None] = print,
              adapter_dir: str | Path | None = None, progress=None) -> ProofResult:
    """Build teacher and twin, distil every variant of ``config.variants``, evaluate every row.

    ``adapter_dir`` keeps the full pipeline's run (adapter, checkpoint, log) there; ``progress`` is an
    optional rich ``Progress`` that shows each distillation.
    """
    start = time.perf_counter()
    world = build_world(config)
    rows = teacher_rows(world, config)
    raw_rate = rows[0].outlier_rate
    log(f"teacher: {raw_rate:.2f}% outliers raw, {rows[1].outlier_rate:.2f}% after TTA")
    with tempfile.TemporaryDirectory(prefix="phreg-targets-") as shared_targets:
        for name in config.variants:
            use_registers, denoise = VARIANTS[name]
            keep = adapter_dir if (use_registers and denoise) else None
            student, result = distill_variant(world.teacher, world.scenes["distill"].images,
                                              registers=config.registers if use_registers else 0, denoise=denoise,
                                              config=config, out_dir=keep, progress=progress, description=name,
                                              target_cache=shared_targets)
            row = evaluate_in(world, name, student, raw_rate)
            row.register_share = register_share(student, world.scenes["eval"].images)
            row.seconds, row.final_loss = result.seconds, result.recent_loss
            rows.append(row)
            log(f"{name}: {result.steps} steps in {result.seconds:.1f}s, {row.outlier_rate:.2f}% outliers")
    document = find_ttr_neurons(world)
    quality = finder_quality(document, world.teacher)
    rows.append(ttr_row(world, document, raw_rate))
    log(f"{TTR}: planted neurons recovered with recall@{quality['top_k']} {quality['recall_at_k']:.2f}, "
        f"precision@{quality['top_k']} {quality['precision_at_k']:.2f}, R-precision {quality['r_precision']:.2f}; "
        f"{rows[-1].outlier_rate:.2f}% outliers")
    rows.append(evaluate_in(world, "twin (no artifacts)", plain(world.twin), raw_rate))
    return ProofResult(rows, config, time.perf_counter() - start, quality)


def format_table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    head = ("| model | outliers % | reduction vs raw | seg mIoU | depth RMSE (m) | worst-1% cos to twin "
            "| firing on registers |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        reduction = "—" if r.outlier_reduction is None else f"{r.outlier_reduction:.1f}%"
        share = "—" if r.register_share is None else f"{r.register_share:.1f}%"
        lines.append(f"| {r.name} | {r.outlier_rate:.2f} | {reduction} | {r.miou:.2f} | {r.depth_rmse:.3f} | "
                     f"{r.cos_to_twin_p01:.3f} | {share} |")
    return "\n".join(lines)
