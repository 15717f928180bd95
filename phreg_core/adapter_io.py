"""PH-Reg adapters on disk: ``adapter.safetensors`` (only the tensors that changed) + ``adapter.json``.

The sidecar names the base backbone and the sha256 of its weights; loading onto other base weights is
refused (the deltas are meaningless there). It also names the positional-embedding resampling policy the
student was made with (``pos_resample``, :mod:`phreg_core.pos_embed`): the stored position table was
resampled with it and other input sizes are resampled with it, whatever policy the base backbone is built
with. Sidecars of version 1 predate policies; they were made with ``"bicubic"``. Both files are written
atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phreg_core.atomic import write_atomic
from phreg_core.errors import FileFormatError, MissingFileError, PhregError
from phreg_core.hashing import file_sha256
from phreg_core.student import LEGACY_POLICY, Student
from phreg_core.vit import TokenViT

__all__ = ["ADAPTER_FORMAT", "AdapterMismatchError", "adapter_paths", "load_adapter",
           "read_sidecar", "save_adapter", "sidecar_policy"]

ADAPTER_FORMAT = "phreg-adapter"
ADAPTER_VERSION = 2  # 2: the positional-embedding resampling policy is recorded (and checked on load)


class AdapterMismatchError(PhregError, ValueError):
    """The adapter was made for other base weights (or another architecture)."""


def adapter_paths(path: str | Path) -> tuple[Path, Path]:
    """``(tensors, sidecar)`` for a folder (``adapter.safetensors`` inside) or either file."""
    path = Path(path)
    if path.is_dir():
        path = path / "adapter.safetensors"
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path, path.with_suffix(".json")


def save_adapter(
    student: Student,
    path: str | Path,
    *,
    base_name: str | None,
    base_weights_sha256: str | None,
    config: dict[str, Any] | None = None,
    steps: int = 0,
    final_loss: float | None = None,
    teacher: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the student's changed tensors and the sidecar; returns both paths."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors_path, sidecar_path = adapter_paths(path)
    state = student.changed_state()
    write_atomic(tensors_path, lambda tmp: save_file(state, tmp, metadata={"format": ADAPTER_FORMAT}),
                 io_errors=(SafetensorError,))
    sidecar = {
        "format": ADAPTER_FORMAT,
        "version": ADAPTER_VERSION,
        "base": {"name": base_name, "weights_sha256": base_weights_sha256},
        "registers": student.num_registers,
        "unlock": student.unlock.to_dict(),
        "student": student.spec(),
        "teacher": teacher,
        "config": config or {},
        "steps": int(steps),
        "final_loss": final_loss,
        "tensors": {name: list(t.shape) for name, t in sorted(state.items())},
        "tensors_file": tensors_path.name,
        "tensors_sha256": file_sha256(tensors_path),
        **(extra or {}),
    }
    text = json.dumps(sidecar, indent=2, sort_keys=False, allow_nan=False)
    write_atomic(sidecar_path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return tensors_path, sidecar_path


# sidecar field -> the JSON types it must have (what load_adapter and the phreg method read)
_SIDECAR_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "version": (int,), "base": (dict,), "student": (dict,), "tensors_sha256": (str,),
}


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read and check ``adapter.json``; a missing or malformed sidecar raises a :class:`PhregError` naming it."""
    tensors_path, sidecar_path = adapter_paths(path)
    if not sidecar_path.exists():
        raise MissingFileError(f"adapter sidecar {sidecar_path} not found; an adapter is the pair "
                               f"{tensors_path.name} + {sidecar_path.name} written by `phreg-bench distill`")
    try:
        data = json.loads(sidecar_path.read_bytes())
    except (OSError, ValueError) as error:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise FileFormatError(f"{sidecar_path} is not a readable adapter sidecar ({error}); copy it again "
                              "from the folder `phreg-bench distill` wrote") from error
    if not isinstance(data, dict) or data.get("format") != ADAPTER_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise FileFormatError(f"{sidecar_path} is not a PH-Reg adapter sidecar (format {found!r})")
    for key, types in _SIDECAR_FIELDS.items():
        if not isinstance(data.get(key), types) or isinstance(data.get(key), bool):
            raise FileFormatError(f"{sidecar_path}: field {key!r} is missing or not a "
                                  f"{' or '.join(t.__name__ for t in types)}; the sidecar is damaged")
    if data["version"] > ADAPTER_VERSION:
        raise FileFormatError(f"{sidecar_path} has adapter version {data['version']}; this phreg_core reads "
                              f"<= {ADAPTER_VERSION}: upgrade phreg-bench")
    base = data["base"]
    for key in ("name", "weights_sha256"):
        if base.get(key) is not None and not isinstance(base[key], str):
            raise FileFormatError(f"{sidecar_path}: base.{key} must be a string or null")
    return data


def check_base(sidecar: dict[str, Any], weights_sha256: str | None, where: str = "adapter") -> None:
    """Refuse an adapter made for other base weights."""
    expected = sidecar.get("base", {}).get("weights_sha256")
    name = sidecar.get("base", {}).get("name")
    if expected is None:
        raise AdapterMismatchError(f"{where} does not record its base weights sha256, so it cannot be checked "
                                   "against this backbone; re-save it with base_weights_sha256 set")
    if weights_sha256 != expected:
        raise AdapterMismatchError(
            f"{where} was distilled from {name!r} with weights sha256 {expected[:12]}…, but this backbone's "
            f"weights hash to {str(weights_sha256)[:12]}…; load the same base weights (--weights) the "
            "adapter was made from, or distil a new adapter for these weights")


def sidecar_policy(sidecar: dict[str, Any]) -> str:
    """The resampling policy an adapter was made with (``"bicubic"`` for version-1 sidecars)."""
    return sidecar.get("student", {}).get("pos_resample") or LEGACY_POLICY


def load_adapter(base: TokenViT, path: str | Path, *, weights_sha256: str | None) -> tuple[Student, dict]:
    """Rebuild the student on ``base`` and load the adapter; returns ``(student, sidecar)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors_path, sidecar_path = adapter_paths(path)
    sidecar = read_sidecar(sidecar_path)
    check_base(sidecar, weights_sha256, where=str(tensors_path))
    if not tensors_path.exists():
        raise MissingFileError(f"adapter tensors {tensors_path} not found next to {sidecar_path}")
    actual = file_sha256(tensors_path)
    if actual != sidecar.get("tensors_sha256"):
        raise AdapterMismatchError(f"{tensors_path} does not match the sha256 in {sidecar_path.name} (file "
                                   "changed or truncated); copy both files of the adapter together")
    try:
        student = Student.from_spec(base, {"pos_resample": sidecar_policy(sidecar), **sidecar["student"]})
    except PhregError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise FileFormatError(f"{sidecar_path}: its 'student' section cannot rebuild a student on this backbone "
                              f"({type(error).__name__}: {error}); the sidecar is damaged or of another "
                              "version") from error
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as error:
        raise FileFormatError(f"{tensors_path} is not a readable safetensors file ({error})") from error
    try:
        student.load_changed_state(tensors)
    except (KeyError, ValueError, RuntimeError) as error:
        raise AdapterMismatchError(f"{tensors_path}: {error}") from error
    return student.eval(), sidecar
