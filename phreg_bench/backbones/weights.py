"""Read local weight files safely and fingerprint them.

Accepted formats (``--weights PATH``):

* ``.safetensors``;
* PyTorch ``.pt`` / ``.pth`` / ``.bin`` state dicts, read with ``torch.load(weights_only=True)`` — a plain
  dict of tensors, or one nested under ``state_dict`` / ``model`` / ``module`` (``module.`` prefixes from
  DDP are stripped);
* TorchScript archives such as OpenAI's CLIP ``.pt`` files, taken apart by
  :mod:`~phreg_bench.backbones.torchscript_archive` without running their code.

Nothing else is ever unpickled: a file that needs arbitrary Python objects is refused with a message that
says how to convert it.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from phreg_bench.backbones.torchscript_archive import (
    ArchiveError,
    is_torchscript_archive,
    read_torchscript_tensors,
)
from phreg_core.errors import ConfigError, MissingFileError, PhregError
from phreg_core.hashing import file_sha256

NESTED_KEYS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")  # checkpoint wrappers
CONVERT_HINT = (
    "convert it once, in an environment you trust: "
    "`sd = torch.load(PATH, weights_only=False)` (take the state dict out of it), then "
    "`safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, 'weights.safetensors')`"
)


class WeightsError(PhregError, ValueError):
    """A weights file that cannot be read safely or does not fit the model."""


def state_dict_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, shapes, dtypes and bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsSource:
    """Where a backbone's weights come from: a file (local or fetched from the hub), or none (seeded init)."""

    file: Path | None  # None: the model keeps its seeded random initialisation
    weights_id: str  # recorded in results: the resolved path, "hf-hub:<repo>/<file>", a URL, "random-init(seed=N)"
    hub_repo: str | None = None  # the Hugging Face repo the file came from

    @classmethod
    def from_hub(cls, repo: str, file: Path) -> WeightsSource:
        return cls(file, f"hf-hub:{repo}/{file.name}", repo)

    def sha256(self, model: torch.nn.Module) -> str:
        """The file's sha256, or (random init) the sha256 of ``model``'s state dict."""
        return file_sha256(self.file) if self.file is not None else state_dict_sha256(model)


def check_weights_options(weights: str | None, random_init: bool) -> None:
    """Raise :class:`ConfigError` when both ``weights`` and ``random_init`` are given (a factory may check this
    before any download; :func:`resolve_weights` checks it too)."""
    if random_init and weights:
        raise ConfigError("--random-init and --weights exclude each other")


def resolve_weights(weights: str | None, *, random_init: bool, seed: int,
                    hub: Callable[[], WeightsSource]) -> WeightsSource:
    """The weights a family factory loads: a local ``--weights`` file, ``--random-init`` seeded weights (no
    network), else ``hub()`` (the family's default download, called only then).

    Raises :class:`ConfigError` when both ``weights`` and ``random_init`` are given.
    """
    check_weights_options(weights, random_init)
    if weights:
        path = Path(weights).expanduser().resolve()
        return WeightsSource(path, str(path))
    if random_init:
        return WeightsSource(None, f"random-init(seed={seed})")
    return hub()


def _unwrap(checkpoint: object, path: Path) -> dict[str, Tensor]:
    if isinstance(checkpoint, dict) and not all(isinstance(v, Tensor) for v in checkpoint.values()):
        for key in NESTED_KEYS:
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise WeightsError(f"{path}: expected a state dict (name -> tensor), got {type(checkpoint).__name__}")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: no tensors found (top-level keys: {sorted(checkpoint)[:8]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _torch_load(path: Path) -> object:
    # argparse.Namespace is allowed the way timm allows it: training checkpoints keep their args in one.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a zip checkpoint: the globals cannot be listed
            unsafe = []
        if not unsafe and "weights_only" not in str(error).lower():
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint: {error}") from error
        raise WeightsError(
            f"{path}: refusing to unpickle arbitrary Python objects ({', '.join(unsafe) or 'unknown globals'}); "
            f"only tensors and plain containers are loaded. If you trust the file, {CONVERT_HINT}"
        ) from error
    except (RuntimeError, EOFError, KeyError, ValueError) as error:  # torch's errors for corrupt files
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint: {error}") from error


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a weights file (see the module docstring for the formats) into ``{name: tensor}`` on CPU."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError
            raise WeightsError(f"{path}: not a valid safetensors file: {error}") from error
    if path.suffix in (".npz", ".npy"):
        raise WeightsError(f"{path}: JAX/NumPy checkpoints are not supported here; use the timm or open_clip "
                           "hub weights, or convert to safetensors")
    if is_torchscript_archive(path):
        try:
            return read_torchscript_tensors(path)
        except ArchiveError as error:
            raise WeightsError(str(error)) from error
    return _unwrap(_torch_load(path), path)


def load_into(model: torch.nn.Module, path: str | Path) -> None:
    """Read ``path`` with :func:`read_state_dict` (any supported format) and load it strictly into ``model``.

    Raises :class:`WeightsError` naming the file when its tensors do not fit the model.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = [f"{len(names)} {what} (e.g. {names[0]!r})" for names, what in
                ((missing, "missing tensors"), (unexpected, "unexpected tensors"), (shapes, "tensors of another shape"))
                if names]
    if problems:
        raise WeightsError(f"{path}: weights do not fit this {type(model).__name__}: {', '.join(problems)}; pass "
                           "the weights this backbone was made with")
    model.load_state_dict(state, strict=True)
