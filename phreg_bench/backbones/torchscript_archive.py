"""Read the tensors of a TorchScript archive (OpenAI's CLIP ``.pt`` files) without running TorchScript.

``torch.jit.load`` compiles and runs the archive's code (TorchScript classes may define ``__setstate__``),
so it is unsafe for files of unknown origin, and ``torch.load(weights_only=True)`` refuses such archives.
This module opens the zip, unpickles ``data.pkl`` with an allowlist (module objects become plain
attribute holders, tensors are rebuilt from the raw storage files) and returns every tensor attribute
under its dotted path — the same names ``torch.jit.load(path).state_dict()`` uses. Nothing in the archive
is executed; any other pickled global is refused.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from phreg_core.errors import PhregError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ArchiveError(PhregError, ValueError):
    """The file is not a TorchScript archive this reader can take apart safely."""


class _ScriptObject:
    """Stand-in for a pickled TorchScript module: keeps its attributes, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


def _identity(value: Any) -> Any:
    return value


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_: Any) -> torch.Tensor:
    return storage.as_strided(tuple(size), tuple(stride), offset).clone()


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a zip file that holds TorchScript code (``code/`` and ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root
        self.storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_floatlist", "build_boollist",
                                                       "build_tensorlist", "build_doublelist", "restore_type_tag"):
            return _identity if name != "restore_type_tag" else (lambda value, _tag: value)
        raise pickle.UnpicklingError(f"refusing pickled global {module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.root}/data/{key}"))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise pickle.UnpicklingError(f"storage {key}: {flat.numel()} elements, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def _collect(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    state = obj.__dict__.get("_state") if isinstance(obj, _ScriptObject) else obj
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out, seen)


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archive's module tree, by dotted name, on the CPU."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        roots = [n[: -len("/data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(roots) != 1:
            raise ArchiveError(f"{path}: expected one data.pkl in the TorchScript archive, found {len(roots)}")
        byteorder = next((n for n in archive.namelist() if n == f"{roots[0]}/byteorder"), None)
        if byteorder and archive.read(byteorder).strip() not in (b"little", b""):
            raise ArchiveError(f"{path}: big-endian TorchScript archives are not supported")
        with archive.open(f"{roots[0]}/data.pkl") as handle:
            try:
                module = _Unpickler(handle, archive, roots[0]).load()
            except (pickle.UnpicklingError, ValueError, TypeError, KeyError) as error:
                raise ArchiveError(f"{path}: cannot read TorchScript archive safely: {error}") from error
    tensors: dict[str, torch.Tensor] = {}
    _collect(module, "", tensors, set())
    if not tensors:
        raise ArchiveError(f"{path}: the TorchScript archive holds no tensors")
    return tensors
