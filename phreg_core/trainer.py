"""The distillation trainer: ``distill(teacher, student, dataset, config) -> DistillResult``.

One step (reference notes §1.3, §1.6, §1.7):

1. draw each image's view plan from ``(seed, epoch, dataset index)``; run all ``B·N`` views through the
   frozen teacher in one pass (``no_grad``, bf16 autocast on CUDA) and average them back (float32), or read
   the targets from the cache;
2. run the student on the unaugmented images; loss = (1 − cos) + MSE on the patch tokens;
3. skip the batch (and count it) if the targets or the loss are not finite; otherwise AdamW step.

The learning rate decays exponentially per epoch, ``lr(e) = lr0·(end/lr0)^((e+1)/epochs)``, clamped at
``end``, and is set when the released trainer sets it (``0raiser0/PH-Reg`` ``DINOv2_full/distill_main.py`` and
the CLIP student's script: right after every optimiser step, ``param_group["lr"] = lr(epoch)``): step 1 runs
at ``lr0``, the first step of epoch ``e >= 1`` at ``lr(e - 1)``, every other step of epoch ``e`` at ``lr(e)``;
a skipped batch leaves the rate unchanged (``lr_update="after-step"``). ``lr_update="per-epoch"`` runs every
step of epoch ``e`` at ``lr(e)`` instead. As the released ``DataLoader(drop_last=True)``, the last partial
batch of each epoch is not trained (``drop_last=False`` trains it). Checkpoints every ``checkpoint_every``
steps hold the trainable tensors, optimiser (with its current rate), scheduler, RNG states and the data
position, so ``resume=True`` continues exactly.
Works in one process or under ``torchrun`` (DDP, ``DistributedSampler``; NCCL on CUDA, gloo on CPU).

In-process use (no CLI, in-memory images)::

    teacher = default_teacher(adapter)                      # or any callable images -> [B, C, h, w]
    student = Student(adapter, 16, train_grid=adapter.grid_for(R, R))
    config = DistillConfig.from_recipe("dinov2", epochs=5, out_dir="run", base_name="my-vit",
                                       base_weights_sha256=backbone.identity.weights_sha256)
    result = distill(teacher, student, TensorImageDataset(images), config)   # images: [N, 3, R, R]

Without ``out_dir`` nothing is written; ``save_adapter`` (``phreg_core.adapter_io``) writes an adapter later.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from phreg_core import distributed as dist_utils
from phreg_core.atomic import write_atomic, write_bytes_atomic, write_failure
from phreg_core.data import Batch, collate
from phreg_core.errors import ConfigError, FileFormatError, OutputExistsError, PhregError
from phreg_core.losses import distill_loss
from phreg_core.progress import PlainProgress, is_terminal
from phreg_core.student import Student
from phreg_core.target_cache import TargetCache, image_digest
from phreg_core.tta import TTADenoiser, ViewIndex, normalised_white, plan_views, view_index

_LOGGER = logging.getLogger(__name__)

__all__ = ["LR_UPDATES", "RECIPES", "DistillConfig", "DistillConfigError", "DistillResult", "EpochExponentialLR",
           "ExponentialEpochDecay", "distill", "load_checkpoint", "read_log", "view_rng"]

LR_UPDATES = ("after-step", "per-epoch")  # when the per-epoch rate is set (see the module docstring)


class DistillConfigError(PhregError, ValueError):
    """Distillation settings that cannot train as asked; the message names the setting and the fix."""


@dataclass(frozen=True)
class Recipe:
    lr: float
    lr_end: float
    batch_size: int
    resolution: int


RECIPES = {
    # PH-Reg paper Table S.2 (CLIP-based): AdamW 3e-4 -> 1e-5, batch 16, 448 px.
    "clip": Recipe(lr=3e-4, lr_end=1e-5, batch_size=16, resolution=448),
    # Paper Table S.3 and DINOv2_full/distill_main.py defaults: 1e-4 -> 5e-6, batch 8, 518 px.
    "dinov2": Recipe(lr=1e-4, lr_end=5e-6, batch_size=8, resolution=518),
}

# Settings that do not change the numbers a run produces (ignored when checking a resume).
_RUNTIME_FIELDS = {"max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "out_dir", "resume",
                   "device", "num_workers", "progress", "save_adapter", "base_name"}


@dataclass
class DistillConfig:
    """Every distillation setting. Defaults are the DINOv2 recipe; see :meth:`from_recipe`."""

    epochs: int = 100  # paper Tables S.2/S.3 (the DINOv2 Table-2 model is the epoch-30 checkpoint, §1.7)
    batch_size: int = 8  # per process (Accelerate split_batches=False in the official script)
    lr: float = 1e-4
    lr_end: float = 5e-6
    weight_decay: float = 1e-2  # AdamW wd 1e-2 (paper Tables S.2/S.3)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (paper Tables S.2/S.3)
    resolution: int = 518  # recorded; the dataset does the resize + crop
    views: int = 10  # N TTA views (paper §3.1)
    shift_frac: float = 0.15  # max shift as a fraction of the grid (paper §3.1)
    mse_scale: float = 1.0  # loss = (1 - cos) + mse_scale * MSE (DINOv2_full/utils/loss.py)
    seed: int = 0
    shuffle: bool = True
    # When the rate is set: "after-step" = the released trainer (after each optimiser step; step 1 at lr) or
    # "per-epoch" (every step of epoch e at lr(e)). See the module docstring.
    lr_update: str = "after-step"
    drop_last: bool = True  # released DataLoader(drop_last=True): the last partial batch of an epoch is skipped
    precision: str = "auto"  # auto = bf16 autocast on CUDA (paper App. B.3), fp32 on CPU; or "bf16", "fp32"
    max_steps: int | None = None  # stop after this many steps in total (a checkpoint is written there)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    out_dir: str | None = None
    resume: bool = False
    device: str = "auto"
    num_workers: int = 0
    cache_targets: str | None = None  # folder of the teacher-target cache (see target_cache.py)
    cache_dtype: str = "float16"
    find_unused_parameters: bool | None = None  # DDP; None = when the student's last block is replaced
    progress: bool = True
    save_adapter: bool = True
    base_name: str | None = None  # recorded in the adapter sidecar
    base_weights_sha256: str | None = None  # recorded; loading checks it
    teacher_id: dict[str, Any] | None = None  # identity of a custom teacher (cache keys); else describe()
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> DistillConfig:
        recipe = RECIPES[name]
        values = {"lr": recipe.lr, "lr_end": recipe.lr_end, "batch_size": recipe.batch_size,
                  "resolution": recipe.resolution}
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data

    def fingerprint(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_FIELDS}


@dataclass
class DistillResult:
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


class ExponentialEpochDecay:
    """LambdaLR factor: ``max((end/lr0)^((epoch+1)/epochs), end/lr0)`` (``DINOv2_full/distill_main.py``)."""

    def __init__(self, lr: float, lr_end: float, epochs: int):
        self.ratio = lr_end / lr
        self.epochs = max(1, epochs)

    def __call__(self, epoch: int) -> float:
        return max(self.ratio ** ((epoch + 1) / self.epochs), self.ratio)


class EpochExponentialLR:
    """Sets the optimiser's learning rate to ``lr(e) = lr0·(end/lr0)^((e+1)/epochs)`` (clamped at ``end``) at
    the moment ``lr_update`` names; the arithmetic is the released script's (``DINOv2_full/distill_main.py``:
    ``new_lr = lr * decay_ratio ** ((epoch + 1) / num_epochs)``, ``end`` if ``new_lr <= end``).

    The rate lives in the optimiser's param groups, so an optimiser checkpoint restores it exactly; this
    object's own state is only the mode (checked on load).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, lr_end: float, epochs: int,
                 lr_update: str = "after-step"):
        if lr_update not in LR_UPDATES:
            raise DistillConfigError(f"lr_update {lr_update!r}: use one of {LR_UPDATES}")
        self.optimizer, self.lr, self.lr_end, self.epochs = optimizer, lr, lr_end, max(1, epochs)
        self.lr_update = lr_update
        self._set(lr if lr_update == "after-step" else self.rate(0))

    def rate(self, epoch: int) -> float:
        value = self.lr * (self.lr_end / self.lr) ** ((epoch + 1) / self.epochs)
        return self.lr_end if value <= self.lr_end else value

    def _set(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def before_step(self, epoch: int) -> None:
        if self.lr_update == "per-epoch":
            self._set(self.rate(epoch))

    def after_step(self, epoch: int) -> None:
        """Call after every optimiser step that was taken (not for skipped batches)."""
        if self.lr_update == "after-step":
            self._set(self.rate(epoch))

    def state_dict(self) -> dict[str, Any]:
        return {"lr_update": self.lr_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("lr_update") != self.lr_update:
            raise DistillConfigError(f"the checkpoint was trained with lr_update {state.get('lr_update')!r}, this "
                                     f"run uses {self.lr_update!r}; use the same setting to resume")


def view_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one image's TTA views (a stream apart from its crop)."""
    return np.random.default_rng([seed, epoch, index, 0x56494557])  # "VIEW"


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


@dataclass
class _StepBatch:
    """A batch with everything the step needs prepared off the GPU's path (in the data workers).

    ``plans`` for every image; with a cache, ``keys`` and the ``cached`` targets (stacked, for the images
    in ``hit``); ``view_index`` covers the images in ``missing`` (all of them without a cache).
    """

    batch: Batch
    plans: list
    missing: list[int]
    view_index: ViewIndex | None
    keys: list[str] | None = None
    hit: list[int] = field(default_factory=list)
    cached: Tensor | None = None

    def __len__(self) -> int:
        return len(self.batch)

    def pin_memory(self) -> _StepBatch:
        return replace(self, batch=self.batch.pin_memory(),
                       view_index=self.view_index.pin_memory() if self.view_index is not None else None,
                       cached=self.cached.pin_memory() if self.cached is not None else None)


class _Prepare:
    """Collate function: stack the items, draw their view plans, look up cached targets, build view indices."""

    def __init__(self, seed: int, views: int, shift_frac: float, patch_size: int, cache: TargetCache | None):
        self.seed, self.views, self.shift_frac, self.patch_size = seed, views, shift_frac, patch_size
        self.cache = cache

    def __call__(self, items) -> _StepBatch:
        batch = collate(items)
        if len(batch) == 0:
            return _StepBatch(batch, [], [], None)
        height, width = batch.images.shape[-2:]
        grid = (height // self.patch_size, width // self.patch_size)
        epochs = batch.epochs or [0] * len(batch)
        plans = [plan_views(view_rng(self.seed, 0 if self.cache is not None else epoch, int(index)), grid,
                            self.views, self.shift_frac)  # cached runs fix each image's views (target_cache.py)
                 for index, epoch in zip(batch.indices, epochs, strict=True)]
        out = _StepBatch(batch, plans, list(range(len(batch))), None)
        if self.cache is not None:
            out.keys = [self.cache.key(image_digest(image), plan) for image, plan in zip(batch.images, plans,
                                                                                        strict=True)]
            found = [self.cache.load(key) for key in out.keys]
            out.hit = [i for i, target in enumerate(found) if target is not None]
            out.missing = [i for i, target in enumerate(found) if target is None]
            if out.hit:
                out.cached = torch.stack([found[i] for i in out.hit])
        if out.missing:
            out.view_index = view_index([plans[i] for i in out.missing], self.patch_size, height, width)
        return out


class _EpochOrder(Sampler):
    """The ``(index, epoch)`` keys of the current epoch, from the current position on (set by the trainer)."""

    def __init__(self):
        self.keys: list[tuple[int, int]] = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


CHECKPOINT_FORMAT = "phreg-checkpoint"
CHECKPOINT_VERSION = 2  # 2: only tensors and plain containers, read with torch.load(weights_only=True)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temp file; a full disk or a read-only folder raises ``WriteError`` naming ``path``."""
    write_atomic(path, lambda temp: torch.save(obj, temp), io_errors=(RuntimeError,))


def _rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) global RNG states as tensors and plain values (``weights_only``-loadable)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`_rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers, no code.

    Raises :class:`FileFormatError` naming ``path`` for anything else (a pickle that needs other globals,
    a checkpoint of an older format, a damaged file).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError (bad zip), EOFError, ... from torch's reader
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileFormatError(
            f"{path} is not a PH-Reg checkpoint this version can read safely ({type(error).__name__}: "
            f"{first[:200]}); checkpoints are only read as tensors and plain containers. Delete it, or start "
            "a new --out folder") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(f"{path} is not a PH-Reg checkpoint; delete it or start a new --out folder")
    if state.get("version") != CHECKPOINT_VERSION:
        raise FileFormatError(f"{path} is a PH-Reg checkpoint of format version {state.get('version')!r}, this "
                              f"version resumes only version {CHECKPOINT_VERSION}; start a new --out folder")
    return state


def _checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / "checkpoints"
    return sorted(folder.glob("step-*.pt")) if folder.is_dir() else []


def read_log(path: Path) -> tuple[list[tuple[dict[str, Any], bytes]], bytes]:
    """The records of a ``log.jsonl`` with their raw lines, and the torn tail (``b""`` if none).

    Every record is appended as one line ending in a newline, so text after the last newline is the torn
    remainder of an interrupted append (a kill or a full disk). Any other malformed line raises
    :class:`FileFormatError` naming the file and the line.
    """
    try:
        *lines, torn = path.read_bytes().split(b"\n")
    except OSError as error:
        raise FileFormatError(f"cannot read the training log {path}: {error.strerror or error}") from error
    records = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
            raise FileFormatError(f"{path}, line {number}: not a JSON log record ({error}); delete the line or "
                                  "the file (it is only a log)") from error
        if not isinstance(record, dict) or type(record.get("step")) is not int:
            raise FileFormatError(f"{path}, line {number}: a log record needs an integer 'step'; delete the line "
                                  "or the file (it is only a log)")
        records.append((record, raw))
    return records, torn


class _Trainer:
    def __init__(self, teacher: Callable[[Tensor], Tensor], student: Student, dataset: Dataset,
                 config: DistillConfig, env: dist_utils.DistEnv, fill: tuple[float, ...] | None):
        self.config = config
        self.env = env
        self.device = env.device
        self.student = student.to(self.device).train()
        if isinstance(teacher, nn.Module):
            teacher.to(self.device).eval()
        self.teacher = teacher
        vision = student.vision
        fill = fill if fill is not None else normalised_white(vision.mean, vision.std)
        self.denoiser = TTADenoiser(teacher, vision.patch_size, fill, config.views, config.shift_frac)
        self.use_bf16 = config.precision == "bf16" or (config.precision == "auto" and self.device.type == "cuda")
        if config.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision {config.precision!r}: use auto, bf16 or fp32")

        named = student.trainable_named_parameters()
        if not named:
            raise ConfigError("the student has no trainable parameters; check the unlock set")
        self.optimizer = torch.optim.AdamW([p for _, p in named], lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay)
        self.scheduler = EpochExponentialLR(self.optimizer, config.lr, config.lr_end, config.epochs,
                                            config.lr_update)
        self.model: nn.Module = student
        if env.distributed:
            unused = config.find_unused_parameters
            if unused is None:
                unused = student.last_block is not None
            self.model = nn.parallel.DistributedDataParallel(
                student, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=unused)

        self.items = _Items(dataset)
        self.cache: TargetCache | None = None
        if config.cache_targets:
            self.cache = TargetCache(config.cache_targets, self._teacher_identity(), config.cache_dtype)
            if getattr(dataset, "fixed_crops", True) is False:
                dataset.fixed_crops = True  # a cached target is only valid for one crop (target_cache.py)
        # drop_last: each process gets floor(N / world) images and floor(that / batch) full batches, i.e.
        # floor(N / (world * batch)) steps, what Accelerate's sharded DataLoader(drop_last=True) gives.
        self.sampler = DistributedSampler(self.items, num_replicas=env.world_size, rank=env.rank,
                                          shuffle=config.shuffle, seed=config.seed, drop_last=config.drop_last)
        if config.drop_last:
            self.steps_per_epoch = len(self.sampler) // config.batch_size
            if self.steps_per_epoch == 0:
                raise DistillConfigError(
                    f"{len(self.items)} training images make no full batch of {config.batch_size} per process "
                    f"({env.world_size} process(es)); the last partial batch is dropped (drop_last, as the "
                    "released trainer), so nothing would train: lower --batch-size or add images")
        else:
            self.steps_per_epoch = math.ceil(len(self.sampler) / config.batch_size)
        total = config.epochs * self.steps_per_epoch
        self.total_steps = min(total, config.max_steps) if config.max_steps is not None else total
        self.out_dir = Path(config.out_dir) if config.out_dir else None
        self.step = self.epoch = self.batch_in_epoch = 0
        self.skipped = self.corrupt = self.images_seen = 0
        self.losses: list[float] = []
        self.recent: list[float] = []
        self.last_loss: float | None = None
        self.step_seconds: list[float] = []
        self._order = _EpochOrder()
        self.step_lr: float | None = None  # the learning rate the current step ran at (None: skipped)
        self._loader: DataLoader | None = None

    # -- identity / targets -------------------------------------------------------------------------
    def _teacher_identity(self) -> dict[str, Any]:
        config = self.config
        if config.teacher_id is not None:
            described = config.teacher_id
        elif hasattr(self.teacher, "describe"):
            described = self.teacher.describe()
            if config.base_weights_sha256 is None:
                raise ConfigError("caching targets needs the teacher's weights identity: set "
                                 "config.base_weights_sha256 (or config.teacher_id)")
        else:
            raise ConfigError("caching targets of a custom teacher needs config.teacher_id (a dict naming the "
                             "teacher and its weights) so that cache keys change when the teacher does")
        return {"teacher": described, "weights": config.base_weights_sha256, "views": config.views,
                "shift_frac": config.shift_frac, "fill": list(self.denoiser.fill),
                "patch_size": self.denoiser.patch_size}

    def _targets(self, step: _StepBatch, images: Tensor) -> Tensor:
        """Denoised targets ``[B, C, h, w]`` (float32): from the cache where prepared, else the teacher."""
        computed = None
        if step.missing:
            index = step.view_index.to(self.device, non_blocking=True)
            subset = images if len(step.missing) == len(step) else images[step.missing]
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                computed = self.denoiser(subset, [step.plans[i] for i in step.missing], index).float()
            if self.cache is not None:
                self.cache.misses += len(step.missing)
                self.cache.put_many([step.keys[i] for i in step.missing], computed)
        if not step.hit:
            return computed
        self.cache.hits += len(step.hit)
        cached = step.cached.to(self.device, non_blocking=True).float()
        if computed is None:
            return cached
        targets = torch.empty((len(step), *cached.shape[1:]), device=self.device, dtype=torch.float32)
        targets[step.hit] = cached
        targets[step.missing] = computed
        return targets

    # -- checkpoints --------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """Everything a resume needs, as tensors and plain containers only (see :func:`load_checkpoint`)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "position": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "counters": {"skipped": self.skipped, "corrupt": self.corrupt, "images_seen": self.images_seen},
            "last_loss": self.last_loss,
            "recent": list(self.recent),
            "trainable": {n: p.detach().cpu().clone() for n, p in self.student.trainable_named_parameters()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "fingerprint": self.config.fingerprint(),
            "world_size": self.env.world_size,
        }

    def save_checkpoint(self) -> Path | None:
        if self.out_dir is None:
            return None
        path = self.out_dir / "checkpoints" / f"step-{self.step:08d}.pt"
        if self.env.is_main:
            _atomic_torch_save(self._state(), path)
            for old in _checkpoints(self.out_dir)[: -max(1, self.config.keep_checkpoints)]:
                old.unlink(missing_ok=True)
        dist_utils.barrier(self.env)
        return path

    def restore(self) -> Path | None:
        """Load the newest checkpoint of ``out_dir`` (resume) or refuse to overwrite one (no resume)."""
        if self.out_dir is None:
            if self.config.resume:
                raise ConfigError("resume needs config.out_dir (where the checkpoints are)")
            return None
        found = _checkpoints(self.out_dir)
        if not self.config.resume and found:
            raise OutputExistsError(f"{self.out_dir} already holds checkpoints ({found[-1].name}); pass "
                                    "--resume to continue that run or choose another --out folder")
        if not found:
            if self.env.is_main:
                self._truncate_log(0)  # a run killed before its first checkpoint starts over
            return None
        path = found[-1]
        state = load_checkpoint(path)
        try:
            self._restore_state(path, state)
        except PhregError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
            raise FileFormatError(f"{path} is a damaged PH-Reg checkpoint ({type(error).__name__}: {error}); "
                                  "delete it to resume from the one before, or start a new --out folder") from error
        if self.env.is_main:
            self._truncate_log(self.step)
        return path

    def _restore_state(self, path: Path, state: dict[str, Any]) -> None:
        """Copy a loaded checkpoint into the student, optimiser, scheduler, RNGs and counters."""
        mismatched = {k: (v, self.config.fingerprint().get(k)) for k, v in state["fingerprint"].items()
                      if self.config.fingerprint().get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(mismatched.items()))
            raise ConfigError(f"cannot resume from {path}: settings differ ({detail}); use the same settings "
                             "or start a new --out folder")
        if state["world_size"] != self.env.world_size:
            raise ConfigError(f"{path} was written by {state['world_size']} processes, this run has "
                             f"{self.env.world_size}; an exact resume needs the same number")
        own = dict(self.student.trainable_named_parameters())
        if set(own) != set(state["trainable"]):
            raise ConfigError(f"{path} was saved for another unlock set or student")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                own[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        position = state["position"]
        self.step, self.epoch, self.batch_in_epoch = position["step"], position["epoch"], position["batch_in_epoch"]
        counters = state["counters"]
        self.skipped, self.corrupt, self.images_seen = counters["skipped"], counters["corrupt"], counters["images_seen"]
        self.last_loss, self.recent = state["last_loss"], list(state["recent"])

    # -- logging ------------------------------------------------------------------------------------
    def _log_path(self) -> Path | None:
        return self.out_dir / "log.jsonl" if self.out_dir is not None else None

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be redone), and a torn tail.

        Kept lines stay byte for byte; the file is replaced atomically and only when something is dropped.
        """
        path = self._log_path()
        if path is None or not path.exists():
            return
        records, torn = read_log(path)
        kept = [raw for record, raw in records if record["step"] <= step]
        if torn:
            _LOGGER.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", path, len(torn))
        if torn or len(kept) != len(records):
            write_bytes_atomic(path, b"".join(raw + b"\n" for raw in kept))

    def _log(self, record: dict[str, Any]) -> None:
        path = self._log_path()
        if path is None or not self.env.is_main:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as error:
            raise write_failure(path, error) from error

    def _progress(self):
        """A rich bar on standard error in a terminal; elsewhere plain lines at a fixed interval (logs)."""
        if not (self.config.progress and self.env.is_main):
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
        self.sampler.set_epoch(self.epoch)
        start = self.batch_in_epoch * self.config.batch_size
        order = list(self.sampler)[: self.steps_per_epoch * self.config.batch_size]  # drop_last: full batches
        self._order.keys = [(int(i), self.epoch) for i in order[start:]]
        if self._loader is None:
            workers = self.config.num_workers
            prepare = _Prepare(self.config.seed, self.config.views, self.config.shift_frac, self.denoiser.patch_size,
                               self.cache)
            self._loader = DataLoader(self.items, batch_size=self.config.batch_size, sampler=self._order,
                                      num_workers=workers, collate_fn=prepare, persistent_workers=workers > 0,
                                      pin_memory=self.device.type == "cuda")
        return iter(self._loader)

    def _train_step(self, step: _StepBatch) -> float | None:
        """One batch; returns the (process-mean) loss or None when skipped. One host sync per step."""
        if self.env.distributed and not dist_utils.all_true(self.env, len(step) > 0):
            self.corrupt += dist_utils.all_sum_int(self.env, step.batch.corrupt)
            return None
        if len(step) == 0:
            self.corrupt += step.batch.corrupt
            return None
        self.scheduler.before_step(self.epoch)
        self.step_lr = self.optimizer.param_groups[0]["lr"]
        images = step.batch.images.to(self.device, non_blocking=True)
        targets = self._targets(step, images)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            pred = self.model(images)
        loss, _ = distill_loss(targets, pred, self.config.mse_scale)
        finite = torch.isfinite(loss) & torch.isfinite(targets).all()  # NaN/Inf inputs show in the targets
        report = torch.stack([(~finite).float(), torch.where(finite, loss.detach(), 0.0),
                              torch.tensor(float(step.batch.corrupt), device=self.device)])
        if self.env.distributed:
            torch.distributed.all_reduce(report)
        bad, loss_sum, corrupt = report.tolist()  # the step's only host sync (a skip must be decided here)
        self.corrupt += int(round(corrupt))
        self.optimizer.zero_grad(set_to_none=True)
        if bad > 0:
            return None
        loss.backward()
        self.optimizer.step()
        self.scheduler.after_step(self.epoch)  # released: the new rate is set right after the step
        self.images_seen += len(step) * self.env.world_size
        return loss_sum / self.env.world_size

    def run(self) -> DistillResult:
        config = self.config
        self.restore()
        start = time.perf_counter()
        first_loss: float | None = None
        checkpoint: Path | None = None
        progress = self._progress()
        task = None
        if progress is not None:
            progress.start()
            task = progress.add_task("distil", total=self.total_steps, completed=self.step, loss="-", speed="-")
        try:
            while self.epoch < config.epochs and self.step < self.total_steps:
                tick = time.perf_counter()
                for batch in self._epoch_batches():
                    self.step_lr = None
                    loss = self._train_step(batch)
                    self.step += 1
                    self.batch_in_epoch += 1
                    now = time.perf_counter()
                    seconds, tick = now - tick, now  # includes waiting for data
                    self.step_seconds.append(seconds)
                    if loss is None:
                        self.skipped += 1
                        self.losses.append(float("nan"))
                    else:
                        self.last_loss = loss
                        self.recent = (self.recent + [loss])[-20:]
                        self.losses.append(loss)
                        first_loss = loss if first_loss is None else first_loss
                    speed = len(batch) * self.env.world_size / max(seconds, 1e-9)
                    if progress is not None:
                        progress.update(task, completed=self.step, speed=f"{speed:.1f}",
                                        loss=f"{self.last_loss:.4f}" if self.last_loss is not None else "-")
                    if self.step % config.log_every == 0 or self.step == self.total_steps:
                        self._log({"step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch,
                                   "loss": loss, "lr": self.step_lr,
                                   "images_per_s": speed, "skipped": self.skipped, "corrupt": self.corrupt,
                                   "time": time.time()})
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                        checkpoint = self.save_checkpoint()
                    if self.step >= self.total_steps:
                        break
                if self.batch_in_epoch >= self.steps_per_epoch:  # the epoch is complete
                    self.epoch += 1
                    self.batch_in_epoch = 0
        finally:
            if progress is not None:
                progress.stop()
        if self.out_dir is not None and (checkpoint is None or not checkpoint.name.endswith(f"{self.step:08d}.pt")):
            checkpoint = self.save_checkpoint()
        return DistillResult(
            steps=self.step, epochs_completed=self.epoch, final_loss=self.last_loss,
            recent_loss=float(np.mean(self.recent)) if self.recent else None, first_loss=first_loss,
            losses=self.losses, skipped_batches=self.skipped, corrupt_images=self.corrupt,
            images_seen=self.images_seen, seconds=time.perf_counter() - start, step_seconds=self.step_seconds,
            cache_hits=self.cache.hits if self.cache else 0, cache_misses=self.cache.misses if self.cache else 0,
            checkpoint_path=checkpoint)


def distill(teacher: Callable[[Tensor], Tensor], student: Student, dataset: Dataset,
            config: DistillConfig | None = None, *, fill: tuple[float, ...] | None = None) -> DistillResult:
    """Distil ``teacher``'s TTA-denoised targets into ``student`` on ``dataset``; returns the result.

    ``dataset`` items are normalised ``[3, R, R]`` tensors or ``{"image": tensor}`` dicts (``None`` = an
    unreadable file). ``fill`` overrides the normalised-white padding (default: from the student's
    mean/std). With ``config.out_dir`` set, checkpoints, ``log.jsonl`` and (if ``save_adapter``) the adapter
    ``adapter.safetensors`` + ``adapter.json`` are written there by process 0.
    """
    config = config or DistillConfig()
    env = dist_utils.setup(config.device)
    try:
        trainer = _Trainer(teacher, student, dataset, config, env, fill)
        result = trainer.run()
        if config.out_dir and config.save_adapter:
            from phreg_core.adapter_io import save_adapter

            if env.is_main:
                teacher_info = teacher.describe() if hasattr(teacher, "describe") else config.teacher_id
                result.adapter_path, result.sidecar_path = save_adapter(
                    student, Path(config.out_dir) / "adapter.safetensors", base_name=config.base_name,
                    base_weights_sha256=config.base_weights_sha256, config=config.to_dict(), steps=result.steps,
                    final_loss=result.final_loss, teacher=teacher_info,
                    extra={"skipped_batches": result.skipped_batches, "corrupt_images": result.corrupt_images})
            else:
                result.adapter_path = Path(config.out_dir) / "adapter.safetensors"
            dist_utils.barrier(env)
        return result
    finally:
        dist_utils.teardown(env)


def with_overrides(config: DistillConfig, **overrides: Any) -> DistillConfig:
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown distillation settings {unknown}")
    return replace(config, **overrides)
