"""The distillation trainer: ``distill(teacher, student, dataset, recipe, options) -> DistillResult``.

One step (reference notes §1.3, §1.6, §1.7):

1. the batch's TTA-denoised teacher targets (:class:`phreg_core.targets.TargetSource`: view plans from
   ``(seed, epoch, dataset index)``, all ``B·N`` views through the frozen teacher in one pass, averaged back
   in float32, or read from the target cache);
2. run the student on the unaugmented images; loss = (1 − cos) + MSE on the patch tokens;
3. skip the batch (and count it) if the targets or the loss are not finite; otherwise AdamW step.

The learning rate follows the released trainer's per-epoch exponential decay
(:class:`phreg_core.recipe.EpochExponentialLR`). As the released ``DataLoader(drop_last=True)``, the last
partial batch of each epoch is not trained (``drop_last=False`` trains it). Checkpoints
(:mod:`phreg_core.checkpoint`) every ``checkpoint_every`` steps let ``resume=True`` continue exactly.
Works in one process or under ``torchrun`` (DDP, ``DistributedSampler``; NCCL on CUDA, gloo on CPU).

In-process use (no CLI, in-memory images)::

    teacher = default_teacher(backbone.vision)              # or any callable images -> [B, C, h, w]
    student = Student(backbone.vision, 16, train_grid=backbone.vision.grid_for(R, R))
    recipe = Recipe.from_preset("dinov2", epochs=5)
    result = distill(teacher, student, TensorImageDataset(images), recipe,     # images: [N, 3, R, R]
                     RunOptions(out_dir="run"), base_name="my-vit",
                     base_weights_sha256=backbone.identity.weights_sha256)

Without ``out_dir`` nothing is written; ``save_adapter`` (``phreg_core.adapter_io``) writes an adapter later.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from phreg_core import distributed as dist_utils
from phreg_core.adapter_io import save_adapter
from phreg_core.checkpoint import Position, RunFolder
from phreg_core.errors import ConfigError
from phreg_core.losses import distill_loss
from phreg_core.progress import PlainProgress, is_terminal
from phreg_core.recipe import EpochExponentialLR, Recipe, RecipeError, RunOptions
from phreg_core.student import Student
from phreg_core.targets import StepBatch, TargetSource
from phreg_core.tta import normalised_white

__all__ = ["DistillResult", "distill"]


@dataclass
class DistillResult:
    """What a run did; losses are per step, ``seconds`` wall time, paths set when written."""

    steps: int
    epochs_completed: int
    final_loss: float | None  # mean loss (over processes) of the last step
    recent_loss: float | None  # mean of the last 20 step losses
    first_loss: float | None  # first loss of this run
    losses: list[float]  # per-step losses of this run (NaN for skipped batches)
    skipped_batches: int
    corrupt_images: int
    images_seen: int
    seconds: float
    step_seconds: list[float] = field(default_factory=list)  # wall time of each step, data wait included
    cache_hits: int = 0
    cache_misses: int = 0
    adapter_path: Path | None = None
    sidecar_path: Path | None = None
    checkpoint_path: Path | None = None


class _Items(Dataset):
    """Normalises items to ``{"index", "epoch", "image"}`` dicts (from tensors, dicts or ``None``).

    Keys are ``(index, epoch)`` pairs, so the epoch reaches persistent worker processes.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        item = self.dataset[index]
        if item is None:
            return None
        if isinstance(item, Tensor):
            image = item
        elif isinstance(item, dict):
            image = item["image"]
        elif isinstance(item, (tuple, list)):
            image = item[0]
        else:
            raise TypeError(f"dataset item of type {type(item).__name__}: expected a tensor or a dict with 'image'")
        return {"index": index, "epoch": epoch, "image": image}


class _EpochOrder(Sampler):
    """The ``(index, epoch)`` keys of the current epoch, from the current position on (set by the trainer)."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _teacher_description(teacher: Callable[[Tensor], Tensor], teacher_id: dict[str, Any] | None) -> dict | None:
    """What the sidecar records as the teacher: its own ``describe()``, else the caller's ``teacher_id``."""
    return teacher.describe() if hasattr(teacher, "describe") else teacher_id


class _Trainer:
    """One run: the DDP-wrapped student, AdamW + schedule, the data order, and the loop over epochs."""

    def __init__(self, teacher: Callable[[Tensor], Tensor], student: Student, dataset: Dataset, recipe: Recipe,
                 options: RunOptions, env: dist_utils.DistEnv, fill: tuple[float, ...] | None,
                 base_weights_sha256: str | None, teacher_id: dict[str, Any] | None):
        self.recipe, self.options, self.env, self.device = recipe, options, env, env.device
        self.student = student.to(self.device).train()
        if isinstance(teacher, nn.Module):
            teacher.to(self.device).eval()
        vision = student.vision
        self.use_bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and self.device.type == "cuda")
        if options.cache_targets and getattr(dataset, "fixed_crops", True) is False:
            raise ConfigError("caching targets needs a dataset with fixed crops (a cached target is valid for one "
                              "crop, target_cache.py): build it with fixed_crops=True")
        self.targets = TargetSource(
            teacher, vision.patch_size, fill if fill is not None else normalised_white(vision.mean, vision.std),
            views=recipe.views, shift_frac=recipe.shift_frac, seed=recipe.seed, device=self.device,
            bf16=self.use_bf16, cache_dir=options.cache_targets or None, cache_dtype=options.cache_dtype,
            teacher_id=teacher_id, weights_sha256=base_weights_sha256)

        named = student.trainable_named_parameters()
        if not named:
            raise ConfigError("the student has no trainable parameters; check the unlock set")
        self.optimizer = torch.optim.AdamW([p for _, p in named], lr=recipe.lr, betas=tuple(recipe.betas),
                                           weight_decay=recipe.weight_decay)
        self.scheduler = EpochExponentialLR(self.optimizer, recipe.lr, recipe.lr_end, recipe.epochs,
                                            recipe.lr_update)
        self.model: nn.Module = student
        if env.distributed:
            unused = options.find_unused_parameters
            if unused is None:
                unused = student.last_block is not None
            self.model = nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused)

        self.items = _Items(dataset)
        # drop_last: each process gets floor(N / world) images and floor(that / batch) full batches, i.e.
        # floor(N / (world * batch)) steps, what Accelerate's sharded DataLoader(drop_last=True) gives.
        self.sampler = DistributedSampler(self.items, num_replicas=env.world_size, rank=env.rank,
                                          shuffle=recipe.shuffle, seed=recipe.seed, drop_last=recipe.drop_last)
        if recipe.drop_last:
            self.steps_per_epoch = len(self.sampler) // recipe.batch_size
            if self.steps_per_epoch == 0:
                raise RecipeError(
                    f"{len(self.items)} training images make no full batch of {recipe.batch_size} per process "
                    f"({env.world_size} process(es)); the last partial batch is dropped (drop_last, as the "
                    "released trainer), so nothing would train: lower --batch-size or add images")
        else:
            self.steps_per_epoch = math.ceil(len(self.sampler) / recipe.batch_size)
        total = recipe.epochs * self.steps_per_epoch
        self.total_steps = min(total, options.max_steps) if options.max_steps is not None else total
        # what a resume must match: the recipe, the student, the base and teacher identity, the target cache use
        fingerprint = {**recipe.to_dict(), "student": student.spec(), "base_weights_sha256": base_weights_sha256,
                       "teacher_id": teacher_id, "cache_targets": bool(options.cache_targets),
                       "cache_dtype": options.cache_dtype}
        self.folder = RunFolder(options.out_dir, env, fingerprint, options.keep_checkpoints)
        self.at = Position()
        self.losses: list[float] = []
        self.step_seconds: list[float] = []
        self._order = _EpochOrder()
        self.step_lr: float | None = None  # the learning rate the current step ran at (None: skipped)
        self._loader: DataLoader | None = None

    def save_checkpoint(self) -> Path | None:
        return self.folder.save(self.at, self.student, self.optimizer, self.scheduler)

    def _progress(self):
        """A rich bar on standard error in a terminal; elsewhere plain lines at a fixed interval (logs)."""
        if not (self.options.progress and self.env.is_main):
            return None
        if not is_terminal(sys.stderr):
            return PlainProgress(formats={"speed": "{} img/s"})
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        return Progress(TextColumn("distil"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                        TextColumn("{task.fields[speed]} img/s"), TimeElapsedColumn(), TextColumn("ETA"),
                        TimeRemainingColumn(), console=Console(stderr=True))

    # -- the loop -----------------------------------------------------------------------------------
    def _epoch_batches(self):
        """Batches of the current epoch from the current position (one loader, persistent workers)."""
        batch_size = self.recipe.batch_size
        self.sampler.set_epoch(self.at.epoch)
        start = self.at.batch_in_epoch * batch_size
        order = list(self.sampler)[: self.steps_per_epoch * batch_size]  # drop_last: full batches
        self._order.keys = [(int(i), self.at.epoch) for i in order[start:]]
        if self._loader is None:
            workers = self.options.num_workers
            self._loader = DataLoader(self.items, batch_size=batch_size, sampler=self._order,
                                      num_workers=workers, collate_fn=self.targets.collate,
                                      persistent_workers=workers > 0, pin_memory=self.device.type == "cuda")
        return iter(self._loader)

    def _train_step(self, step: StepBatch) -> float | None:
        """One batch; returns the (process-mean) loss or None when skipped. One host sync per step."""
        if self.env.distributed and not dist_utils.all_true(self.env, len(step) > 0):
            self.at.corrupt += dist_utils.all_sum_int(self.env, step.batch.corrupt)
            return None
        if len(step) == 0:
            self.at.corrupt += step.batch.corrupt
            return None
        self.scheduler.before_step(self.at.epoch)
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        images = step.batch.images.to(self.device, non_blocking=True)
        targets = self.targets.targets(step, images)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            pred = self.model(images)
        loss, _ = distill_loss(targets, pred, self.recipe.mse_scale)
        finite = torch.isfinite(loss) & torch.isfinite(targets).all()  # NaN/Inf inputs show in the targets
        report = torch.stack([(~finite).float(), torch.where(finite, loss.detach(), 0.0),
                              torch.tensor(float(step.batch.corrupt), device=self.device)])
        if self.env.distributed:
            torch.distributed.all_reduce(report)
        bad, loss_sum, corrupt = report.tolist()  # the step's only host sync (a skip must be decided here)
        self.at.corrupt += int(round(corrupt))
        self.optimizer.zero_grad(set_to_none=True)
        if bad > 0:
            return None
        loss.backward()
        self.optimizer.step()
        self.scheduler.after_step(self.at.epoch)  # released: the new rate is set right after the step
        self.at.images_seen += len(step) * self.env.world_size
        return loss_sum / self.env.world_size

    def _record(self, loss: float | None) -> None:
        if loss is None:
            self.at.skipped += 1
            self.losses.append(float("nan"))
        else:
            self.at.last_loss = loss
            self.at.recent = (self.at.recent + [loss])[-20:]
            self.losses.append(loss)

    def run(self) -> DistillResult:
        at, options = self.at, self.options
        self.folder.restore(options.resume, at, self.student, self.optimizer, self.scheduler)
        start = time.perf_counter()
        first_loss: float | None = None
        checkpoint: Path | None = None
        progress = self._progress()
        task = None
        if progress is not None:
            progress.start()
            task = progress.add_task("distil", total=self.total_steps, completed=at.step, loss="-", speed="-")
        try:
            while at.epoch < self.recipe.epochs and at.step < self.total_steps:
                tick = time.perf_counter()
                for batch in self._epoch_batches():
                    self.step_lr = None
                    loss = self._train_step(batch)
                    at.step += 1
                    at.batch_in_epoch += 1
                    now = time.perf_counter()
                    seconds, tick = now - tick, now  # includes waiting for data
                    self.step_seconds.append(seconds)
                    self._record(loss)
                    first_loss = loss if first_loss is None else first_loss
                    speed = len(batch) * self.env.world_size / max(seconds, 1e-9)
                    if progress is not None:
                        progress.update(task, completed=at.step, speed=f"{speed:.1f}",
                                        loss=f"{at.last_loss:.4f}" if at.last_loss is not None else "-")
                    if at.step % options.log_every == 0 or at.step == self.total_steps:
                        self.folder.log({"step": at.step, "epoch": at.epoch, "batch": at.batch_in_epoch,
                                         "loss": loss, "lr": self.step_lr, "images_per_s": speed,
                                         "skipped": at.skipped, "corrupt": at.corrupt, "time": time.time()})
                    if options.checkpoint_every and at.step % options.checkpoint_every == 0:
                        checkpoint = self.save_checkpoint()
                    if at.step >= self.total_steps:
                        break
                if at.batch_in_epoch >= self.steps_per_epoch:  # the epoch is complete
                    at.epoch += 1
                    at.batch_in_epoch = 0
        finally:
            if progress is not None:
                progress.stop()
        if self.folder.out_dir is not None and (checkpoint is None
                                                or not checkpoint.name.endswith(f"{at.step:08d}.pt")):
            checkpoint = self.save_checkpoint()
        return DistillResult(
            steps=at.step, epochs_completed=at.epoch, final_loss=at.last_loss,
            recent_loss=float(np.mean(at.recent)) if at.recent else None, first_loss=first_loss,
            losses=self.losses, skipped_batches=at.skipped, corrupt_images=at.corrupt,
            images_seen=at.images_seen, seconds=time.perf_counter() - start, step_seconds=self.step_seconds,
            cache_hits=self.targets.hits, cache_misses=self.targets.misses, checkpoint_path=checkpoint)


def distill(teacher: Callable[[Tensor], Tensor], student: Student, dataset: Dataset, recipe: Recipe | None = None,
            options: RunOptions | None = None, *, base_name: str | None = None,
            base_weights_sha256: str | None = None, teacher_id: dict[str, Any] | None = None,
            fill: tuple[float, ...] | None = None) -> DistillResult:
    """Distil ``teacher``'s TTA-denoised targets into ``student`` on ``dataset``; returns the result.

    ``dataset`` items are normalised ``[3, R, R]`` tensors or ``{"image": tensor}`` dicts (``None`` = an
    unreadable file); with ``options.cache_targets`` its crops must be fixed (``fixed_crops=True``; checked,
    never changed). ``recipe`` defaults to :class:`Recipe` (DINOv2), ``options`` to :class:`RunOptions`.
    The identity is explicit: ``base_name`` and ``base_weights_sha256`` name the base weights (recorded in
    the adapter, checked on resume and part of target-cache keys), ``teacher_id`` names a custom teacher
    without ``describe()``. ``fill`` overrides the normalised-white padding (default: from the student's
    mean/std). With ``options.out_dir`` set, checkpoints, ``log.jsonl`` and (if ``options.save_adapter``)
    the adapter ``adapter.safetensors`` + ``adapter.json`` are written there by process 0.
    """
    recipe, options = recipe or Recipe(), options or RunOptions()
    env = dist_utils.setup(options.device)
    try:
        trainer = _Trainer(teacher, student, dataset, recipe, options, env, fill, base_weights_sha256, teacher_id)
        result = trainer.run()
        if options.out_dir and options.save_adapter:
            result.adapter_path = Path(options.out_dir) / "adapter.safetensors"
            if env.is_main:
                result.adapter_path, result.sidecar_path = save_adapter(
                    student, result.adapter_path, base_name=base_name, base_weights_sha256=base_weights_sha256,
                    config=recipe.to_dict(), steps=result.steps, final_loss=result.final_loss,
                    teacher=_teacher_description(teacher, teacher_id),
                    extra={"skipped_batches": result.skipped_batches, "corrupt_images": result.corrupt_images})
            dist_utils.barrier(env)
        return result
    finally:
        dist_utils.teardown(env)
