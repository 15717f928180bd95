"""The proof in numbers: PH-Reg on the planted-artifact ViT, against the truth of its artifact-free twin.

Rows (the paper's Table 3 structure, plus the two references that only a synthetic world has):

* ``teacher (raw)``          the planted ViT as it is ("Vanilla");
* ``teacher + TTA``          PH-Reg's 10-view shift/flip denoising at test time ("Denoising only"); this is
                             the distillation target;
* ``distill, no reg, no denoise`` / ``distill, reg, no denoise`` / ``distill, no reg, denoise`` and
  ``PH-Reg (full)``          students distilled from the raw or the denoised teacher, with 0 or 16 registers;
* ``twin (no artifacts)``    the same weights with the artifact mechanism off: the upper reference.

Columns: the high-norm outlier rate of the final patch tokens (``phreg_core.diagnostics``: norm > 2× the
image's median), its reduction against the raw teacher, the closed-form linear probes' segmentation mIoU
and depth RMSE (:mod:`phreg_bench.synthetic.probes`), the worst-1 % cosine of a model's patch tokens to the
twin's, and the share of the planted neurons' firing that lands on the student's registers.

Images come from three disjoint index ranges of the scene generator: distillation (unlabelled, from 0),
probe training (from 10 000) and evaluation (from 100 000).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from phreg_bench.synthetic.scenes import CLASS_NAMES, render

DISTILL_START, PROBE_START, EVAL_START = 0, 10_000, 100_000

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
    a larger learning rate, so this tiny recipe uses AdamW 3e-3 → 3e-4 (per-epoch exponential decay, as the
    trainer does), batch 8; every other setting is PH-Reg's (16 registers, 10 views, 15 % shifts, official
    unlock set, loss (1 − cos) + MSE).
    """

    scene_seed: int = 0
    num_distill: int = 128
    num_probe: int = 128
    num_eval: int = 64
    steps: int = 200
    batch_size: int = 8
    lr: float = 3e-3
    lr_end: float = 3e-4
    registers: int = 16  # PH-Reg App. B.1
    views: int = 10  # PH-Reg §3.1
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


@dataclass
class Scenes:
    images: Tensor  # normalised [B, 3, S, S]
    labels: Tensor  # [B, S, S]
    depth: Tensor  # [B, S, S]


def load_scenes(start: int, count: int, size: int, seed: int, normalize: Callable[[Tensor], Tensor]) -> Scenes:
    """Render ``count`` scenes from index ``start`` and normalise them for a backbone."""
    scenes = [render(start + i, size, seed) for i in range(count)]
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 255
    return Scenes(normalize(images), torch.from_numpy(np.stack([s.labels for s in scenes])),
                  torch.from_numpy(np.stack([s.depth for s in scenes])))


def distill_variant(backbone, images: Tensor, *, registers: int, denoise: bool, config: ProofConfig,
                    out_dir: str | Path | None = None, progress: bool = False):
    """Distil a PH-Reg student of ``backbone`` on ``images``; returns ``(student, DistillResult)``.

    ``denoise=False`` uses one view (the unmodified image) as the target: the raw teacher output.
    With ``out_dir`` the trainer writes its log, checkpoint and the adapter there.
    """
    from phreg_core.data import TensorImageDataset
    from phreg_core.student import Student
    from phreg_core.teacher import default_teacher
    from phreg_core.trainer import DistillConfig, distill

    teacher = default_teacher(backbone.vision)
    student = Student(backbone.vision, registers, unlock="official", seed=config.seed)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    with tempfile.TemporaryDirectory(prefix="phreg-targets-") as cache:
        settings = DistillConfig(
            epochs=max(1, math.ceil(config.steps / steps_per_epoch)), batch_size=config.batch_size,
            lr=config.lr, lr_end=config.lr_end, views=config.views if denoise else 1, seed=config.seed,
            max_steps=config.steps, resolution=images.shape[-1], device="cpu", progress=progress,
            save_adapter=out_dir is not None, out_dir=str(out_dir) if out_dir is not None else None,
            checkpoint_every=0, cache_targets=cache if denoise else None, base_name=backbone.info.name,
            base_weights_sha256=backbone.info.weights_sha256,
        )
        result = distill(teacher, student, TensorImageDataset(images), settings)
    return student.eval(), result


@torch.inference_mode()
def _features(model_fn: Callable[[Tensor], Tensor], images: Tensor, batch: int = 64) -> Tensor:
    return torch.cat([model_fn(images[i : i + batch]).float() for i in range(0, len(images), batch)])


def register_share(student, images: Tensor) -> float | None:
    """Percent of the planted neurons' firing that lands on ``student``'s registers."""
    from phreg_bench.backbones.planted import firing_maps

    if student.num_registers == 0:
        return None
    with torch.inference_mode():
        student(images)
    maps = firing_maps(student.vision)
    if not maps:
        return None
    firing = maps[0]  # [B, N-1]: registers first (prefix placement), then patches
    return 100.0 * float(firing[:, : student.num_registers].sum() / firing.sum().clamp(min=1e-12))


def evaluate(name: str, model_fn: Callable[[Tensor], Tensor], probe: Scenes, evaluation: Scenes,
             twin_eval: Tensor, raw_rate: float | None) -> Row:
    """Every column of one row, from a function ``normalised images -> patch grid``."""
    from phreg_bench.synthetic.probes import depth_probe, segmentation_probe
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

    def row(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "config": asdict(self.config), "seconds": self.seconds}


def run_proof(config: ProofConfig = ProofConfig(), *, log: Callable[[str], None] = print,
              adapter_dir: str | Path | None = None, progress: bool = False) -> ProofResult:
    """Build teacher and twin, distil every variant of ``config.variants``, evaluate every row.

    ``adapter_dir`` keeps the full pipeline's adapter (``adapter.safetensors`` + ``adapter.json``) there.
    """
    from phreg_bench.backbones.planted import build_planted_vit
    from phreg_bench.methods.tta import build as build_tta

    start = time.perf_counter()
    teacher = build_planted_vit(**config.backbone_options)
    twin = build_planted_vit(artifacts=False, **config.backbone_options)
    size = teacher.info.native_resolution[0]
    scenes = {name: load_scenes(first, count, size, config.scene_seed, teacher.normalize)
              for name, first, count in (("distill", DISTILL_START, config.num_distill),
                                         ("probe", PROBE_START, config.num_probe),
                                         ("eval", EVAL_START, config.num_eval))}
    probe, evaluation = scenes["probe"], scenes["eval"]

    def plain(backbone):
        return lambda images: backbone.forward_tokens(images)[0].patches

    twin_eval = _features(plain(twin), evaluation.images)
    rows = [evaluate("teacher (raw)", plain(teacher), probe, evaluation, twin_eval, None)]
    raw_rate = rows[0].outlier_rate
    tta = build_tta(teacher, views=config.views, seed=config.seed)
    rows.append(evaluate(f"teacher + TTA ({config.views} views)", lambda x: tta.forward_tokens(x, project=False)
                         .patches, probe, evaluation, twin_eval, raw_rate))
    log(f"teacher: {raw_rate:.2f}% outliers raw, {rows[1].outlier_rate:.2f}% after TTA")
    for name in config.variants:
        use_registers, denoise = VARIANTS[name]
        keep = adapter_dir if (use_registers and denoise) else None
        student, result = distill_variant(teacher, scenes["distill"].images, registers=config.registers if
                                          use_registers else 0, denoise=denoise, config=config, out_dir=keep,
                                          progress=progress)
        row = evaluate(name, student, probe, evaluation, twin_eval, raw_rate)
        row.register_share = register_share(student, evaluation.images)
        row.seconds, row.final_loss = result.seconds, result.recent_loss
        rows.append(row)
        log(f"{name}: {result.steps} steps in {result.seconds:.1f}s, {row.outlier_rate:.2f}% outliers")
    rows.append(evaluate("twin (no artifacts)", plain(twin), probe, evaluation, twin_eval, raw_rate))
    return ProofResult(rows, config, time.perf_counter() - start)


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
