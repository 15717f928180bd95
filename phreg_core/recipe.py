"""Distillation settings, split by what they change: a hashed :class:`Recipe` and runtime :class:`RunOptions`.

* :class:`Recipe`: everything that changes the trained adapter (optimiser, schedule, TTA views, loss scale,
  seed, batching, precision). It is recorded in the adapter sidecar (``"config"``) and in every checkpoint,
  and a resume refuses a different one. Its defaults are the DINOv2 recipe and exist only here; the named
  presets (:data:`RECIPES`, paper Tables S.2/S.3) override some of them.
* :class:`RunOptions`: where and how a run executes (output folder, resume, checkpoints, device, data
  workers, progress, the target-cache folder). They do not change the numbers of a step, except that a
  target cache fixes each image's views for the whole run (so whether one is used is checked on resume).

Torch-free, so ``phreg-bench distill --help`` shows these defaults without loading torch; they exist only
here (the command line, the synthetic proof and the README read them).

The learning-rate schedule (:class:`EpochExponentialLR`) is the recipe's ``lr``/``lr_end``/``lr_update``:
``lr(e) = lr0·(end/lr0)^((e+1)/epochs)``, clamped at ``end``, set when the released trainer sets it
(``0raiser0/PH-Reg`` ``DINOv2_full/distill_main.py`` and the CLIP student's script: right after every optimiser
step, ``param_group["lr"] = lr(epoch)``): step 1 runs at ``lr0``, the first step of epoch ``e >= 1`` at
``lr(e - 1)``, every other step of epoch ``e`` at ``lr(e)``; a skipped batch leaves the rate unchanged
(``lr_update="after-step"``). ``lr_update="per-epoch"`` runs every step of epoch ``e`` at ``lr(e)`` instead.

The identity of what is distilled (base name, base weights sha256, teacher) is not a setting: it is passed
to :func:`phreg_core.trainer.distill` and :func:`phreg_core.adapter_io.save_adapter` explicitly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phreg_core.errors import PhregError

if TYPE_CHECKING:  # the schedule only sets param-group rates: no torch import (``--help`` stays light)
    import torch

__all__ = ["DEFAULT_REGISTERS", "LR_UPDATES", "PRECISIONS", "RECIPES", "EpochExponentialLR", "Recipe", "RecipeError",
           "RunOptions"]

DEFAULT_REGISTERS = 16  # PH-Reg App. B.1; `num_register_tokens=16` (CLIP), `--num_of_reg 16` (DINOv2)

LR_UPDATES = ("after-step", "per-epoch")  # when the per-epoch rate is set (see phreg_core.trainer)
PRECISIONS = ("auto", "bf16", "fp32")


class RecipeError(PhregError, ValueError):
    """Distillation settings that cannot train as asked; the message names the setting and the fix."""


@dataclass(frozen=True)
class Recipe:
    """What changes the adapter (hashed: recorded in the sidecar and checkpoints, checked on resume).

    Defaults are the DINOv2 recipe (paper Table S.3, ``DINOv2_full/distill_main.py``); see :data:`RECIPES`
    (``preset`` names the one a recipe started from). Learning rates are per optimiser step; ``resolution``
    is the square training crop in pixels (recorded; the dataset does the resize + crop).
    """

    epochs: int = 100  # paper Tables S.2/S.3 (the DINOv2 Table-2 model is the epoch-30 checkpoint, §1.7)
    batch_size: int = 8  # per process (Accelerate split_batches=False in the official script)
    lr: float = 1e-4
    lr_end: float = 5e-6
    weight_decay: float = 1e-2  # AdamW wd 1e-2 (paper Tables S.2/S.3)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas (paper Tables S.2/S.3)
    resolution: int = 518
    views: int = 10  # N = counts = 10 TTA views (paper §3.1, code `--counts 10`)
    shift_frac: float = 0.15  # max shift as a fraction of the grid (paper §3.1, code default)
    mse_scale: float = 1.0  # loss = (1 - cos) + mse_scale * MSE (DINOv2_full/utils/loss.py, official 1.0)
    seed: int = 0
    shuffle: bool = True
    # When the rate is set: "after-step" = the released trainer (after each optimiser step; step 1 at lr) or
    # "per-epoch" (every step of epoch e at lr(e)). See phreg_core.trainer.
    lr_update: str = "after-step"
    drop_last: bool = True  # released DataLoader(drop_last=True): the last partial batch of an epoch is skipped
    precision: str = "auto"  # auto = bf16 autocast on CUDA (paper App. B.3), fp32 on CPU; or "bf16", "fp32"
    preset: str | None = None  # the name in RECIPES these values started from (recorded, e.g. on model cards)

    def __post_init__(self) -> None:
        if self.lr_update not in LR_UPDATES:
            raise RecipeError(f"lr_update {self.lr_update!r}: use one of {LR_UPDATES}")
        if self.precision not in PRECISIONS:
            raise RecipeError(f"precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Recipe:
        """The named preset of :data:`RECIPES` with ``overrides`` (field names of :class:`Recipe`) applied.

        Raises :class:`RecipeError` for an unknown preset or field name.
        """
        if name not in RECIPES:
            raise RecipeError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RecipeError(f"unknown recipe settings {unknown}; known: {sorted(known)}")
        return replace(RECIPES[name], **overrides)

    @staticmethod
    def default(name: str) -> Any:
        """The default of field ``name`` (what a command-line option left unset means)."""
        return Recipe.__dataclass_fields__[name].default

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (``betas`` as a list): the sidecar's ``"config"`` and the resume fingerprint."""
        data = asdict(self)
        data["betas"] = list(self.betas)
        return data


RECIPES: dict[str, Recipe] = {
    # PH-Reg paper Table S.2 (CLIP-based): AdamW 3e-4 -> 1e-5, batch 16, 448 px.
    "clip": Recipe(lr=3e-4, lr_end=1e-5, batch_size=16, resolution=448, preset="clip"),
    # Paper Table S.3 and DINOv2_full/distill_main.py defaults: the Recipe defaults.
    "dinov2": Recipe(preset="dinov2"),
}


@dataclass(frozen=True)
class RunOptions:
    """How a run executes (not part of the recipe).

    ``out_dir`` receives checkpoints, ``log.jsonl`` and (with ``save_adapter``) the adapter; without it
    nothing is written. ``max_steps`` stops after that many steps in total (a checkpoint is written there;
    a later run with ``resume`` may go further). ``cache_targets`` is the folder of the teacher-target cache
    (:mod:`phreg_core.target_cache`; it fixes each image's views, so the dataset must fix its crops too).
    """

    out_dir: str | Path | None = None
    resume: bool = False
    max_steps: int | None = None
    checkpoint_every: int = 1000  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    save_adapter: bool = True
    device: str = "auto"
    num_workers: int = 0
    progress: bool = True
    cache_targets: str | Path | None = None
    cache_dtype: str = "float16"
    find_unused_parameters: bool | None = None  # DDP; None = when the student's last block is replaced

    @staticmethod
    def default(name: str) -> Any:
        """The default of field ``name`` (what a command-line option left unset means)."""
        return RunOptions.__dataclass_fields__[name].default


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
            raise RecipeError(f"lr_update {lr_update!r}: use one of {LR_UPDATES}")
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
            raise RecipeError(f"the checkpoint was trained with lr_update {state.get('lr_update')!r}, this "
                              f"run uses {self.lr_update!r}; use the same setting to resume")
