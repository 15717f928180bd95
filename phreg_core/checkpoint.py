"""Training state on disk: checkpoints (save, restore, fingerprint check) and the JSONL training log.

A run folder holds ``checkpoints/step-NNNNNNNN.pt`` and ``log.jsonl``, written by process 0 only. A checkpoint
holds the trainable tensors, the optimiser (with its current rate), the scheduler, the RNG states, the data
position and counters, and the run's *fingerprint* (the :class:`~phreg_core.recipe.Recipe`, the student's
spec and the identity of base and teacher): a resume continues exactly, and refuses a run whose fingerprint
differs. Checkpoints hold only tensors and plain containers and are read with
``torch.load(weights_only=True)``: nothing beyond those is unpickled. On resume, log lines written after the
restored step (and a torn last line) are dropped, so no step is logged twice.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phreg_core import distributed as dist_utils
from phreg_core.atomic import write_atomic, write_bytes_atomic, write_failure
from phreg_core.errors import ConfigError, FileFormatError, OutputExistsError, PhregError
from phreg_core.student import Student

_LOGGER = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Position", "RunFolder", "checkpoint_files",
           "load_checkpoint", "read_log"]

CHECKPOINT_FORMAT = "phreg-checkpoint"
CHECKPOINT_VERSION = 2  # 2: only tensors and plain containers, read with torch.load(weights_only=True)


@dataclass
class Position:
    """Where a run stands: steps taken, the epoch and batch within it, counters and the recent losses."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped: int = 0  # batches skipped (non-finite targets or loss)
    corrupt: int = 0  # unreadable images
    images_seen: int = 0  # images trained on, over all processes
    last_loss: float | None = None
    recent: list[float] = field(default_factory=list)  # the last 20 step losses


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


def checkpoint_files(out_dir: Path) -> list[Path]:
    """The checkpoints of a run folder, oldest first."""
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


class RunFolder:
    """The checkpoints and log of one run in ``out_dir`` (``None``: nothing is written or restored).

    ``fingerprint`` (plain values) is stored in every checkpoint and compared key by key on resume.
    Only process 0 writes; every process restores.
    """

    def __init__(self, out_dir: str | Path | None, env: dist_utils.DistEnv, fingerprint: dict[str, Any],
                 keep: int = 2):
        self.out_dir = Path(out_dir) if out_dir else None
        self.env, self.fingerprint, self.keep = env, fingerprint, max(1, keep)

    @property
    def log_path(self) -> Path | None:
        return self.out_dir / "log.jsonl" if self.out_dir is not None else None

    def save(self, position: Position, student: Student, optimizer: torch.optim.Optimizer,
             scheduler: Any) -> Path | None:
        """Write ``step-<position.step>.pt`` (process 0; older ones beyond ``keep`` are deleted); all processes wait."""
        if self.out_dir is None:
            return None
        path = self.out_dir / "checkpoints" / f"step-{position.step:08d}.pt"
        if self.env.is_main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "position": {"step": position.step, "epoch": position.epoch, "batch_in_epoch": position.batch_in_epoch},
                "counters": {"skipped": position.skipped, "corrupt": position.corrupt,
                             "images_seen": position.images_seen},
                "last_loss": position.last_loss,
                "recent": list(position.recent),
                "trainable": {n: p.detach().cpu().clone() for n, p in student.trainable_named_parameters()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "fingerprint": self.fingerprint,
                "world_size": self.env.world_size,
            }
            _atomic_torch_save(state, path)
            for old in checkpoint_files(self.out_dir)[: -self.keep]:
                old.unlink(missing_ok=True)
        dist_utils.barrier(self.env)
        return path

    def restore(self, resume: bool, position: Position, student: Student, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> Path | None:
        """Load the newest checkpoint into ``position``, the student, optimiser, scheduler and RNGs (``resume``),
        or refuse to overwrite one (no ``resume``); returns the checkpoint read, if any.

        Raises :class:`ConfigError` when the settings differ, :class:`OutputExistsError` for a run without
        ``resume`` over existing checkpoints and :class:`FileFormatError` for a damaged checkpoint.
        """
        if self.out_dir is None:
            if resume:
                raise ConfigError("resume needs an output folder (options.out_dir, where the checkpoints are)")
            return None
        found = checkpoint_files(self.out_dir)
        if not resume and found:
            raise OutputExistsError(f"{self.out_dir} already holds checkpoints ({found[-1].name}); pass "
                                    "--resume to continue that run or choose another --out folder")
        if not found:
            if self.env.is_main:
                self._truncate_log(0)  # a run killed before its first checkpoint starts over
            return None
        path = found[-1]
        state = load_checkpoint(path)
        try:
            self._restore_state(path, state, position, student, optimizer, scheduler)
        except PhregError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
            raise FileFormatError(f"{path} is a damaged PH-Reg checkpoint ({type(error).__name__}: {error}); "
                                  "delete it to resume from the one before, or start a new --out folder") from error
        if self.env.is_main:
            self._truncate_log(position.step)
        return path

    def _restore_state(self, path: Path, state: dict[str, Any], position: Position, student: Student,
                       optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        mismatched = {k: (v, self.fingerprint.get(k)) for k, v in state["fingerprint"].items()
                      if self.fingerprint.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(mismatched.items()))
            raise ConfigError(f"cannot resume from {path}: settings differ ({detail}); use the same settings "
                             "or start a new --out folder")
        if state["world_size"] != self.env.world_size:
            raise ConfigError(f"{path} was written by {state['world_size']} processes, this run has "
                             f"{self.env.world_size}; an exact resume needs the same number")
        own = dict(student.trainable_named_parameters())
        if set(own) != set(state["trainable"]):
            raise ConfigError(f"{path} was saved for another unlock set or student")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                own[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        where, counters = state["position"], state["counters"]
        position.step, position.epoch, position.batch_in_epoch = where["step"], where["epoch"], where["batch_in_epoch"]
        position.skipped, position.corrupt = counters["skipped"], counters["corrupt"]
        position.images_seen = counters["images_seen"]
        position.last_loss, position.recent = state["last_loss"], list(state["recent"])

    def _truncate_log(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from (they will be redone), and a torn tail.

        Kept lines stay byte for byte; the file is replaced atomically and only when something is dropped.
        """
        path = self.log_path
        if path is None or not path.exists():
            return
        records, torn = read_log(path)
        kept = [raw for record, raw in records if record["step"] <= step]
        if torn:
            _LOGGER.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", path, len(torn))
        if torn or len(kept) != len(records):
            write_bytes_atomic(path, b"".join(raw + b"\n" for raw in kept))

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``log.jsonl`` (process 0; nothing without an output folder)."""
        path = self.log_path
        if path is None or not self.env.is_main:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as handle:
                handle.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as error:
            raise write_failure(path, error) from error
