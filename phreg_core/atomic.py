"""Atomic file writes: a temp file beside the target, then one rename. Readers never see half a file,
and a killed writer leaves at most a hidden ``.<name>.<random><suffix>`` temp file behind.

The temp file is created like any other file (``open`` mode 0o666 minus the umask), so the finished file
gets the same permissions as one written by ``open()``: 0644 under the usual umask 022, not the 0600 of
:func:`tempfile.mkstemp`. A write that fails for lack of space or permission raises
:class:`phreg_core.errors.WriteError` naming the file and the reason.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from phreg_core.errors import PhregError, WriteError

__all__ = ["write_atomic", "write_bytes_atomic", "write_text_atomic", "write_failure"]

_TORCH_ENFORCE = re.compile(r"\[enforce fail at [^\]]*\]\s*\.?\s*")


def _create_temp(path: Path, suffix: str) -> Path:
    """A new empty file ``.<name>.<8 hex><suffix>`` beside ``path``, created with mode 0o666 & ~umask."""
    for _ in range(100):
        temp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return temp
    raise FileExistsError(errno.EEXIST, "no free temp-file name", str(path))


def write_failure(path: str | Path, error: BaseException) -> WriteError:
    """A :class:`WriteError` naming ``path`` and why ``error`` (an OSError or a library's I/O error) happened.

    torch's writer reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc:…] .
    PytorchStreamWriter failed writing file …``; the message adds the free space of the file system.
    """
    path = Path(path)
    if isinstance(error, OSError) and error.errno is not None:
        reason = os.strerror(error.errno)
    else:
        reason = _TORCH_ENFORCE.sub("", str(error).strip().splitlines()[0] if str(error).strip() else "")
        reason = reason or type(error).__name__
    try:
        free = shutil.disk_usage(next(p for p in (path.parent, *path.parents) if p.exists())).free
        space = f"; {free / 2**20:.1f} MiB free on that file system"
    except (OSError, StopIteration):
        space = ""
    fix = "free some space or choose a writable folder"
    return WriteError(f"could not write {path}: {reason}{space}; {fix}")


def write_atomic(path: str | Path, write: Callable[[str], None], suffix: str = ".tmp",
                 io_errors: tuple[type[BaseException], ...] = ()) -> Path:
    """Call ``write(temp_path)``, then rename the temp file to ``path``; on any failure remove it.

    ``suffix`` matters to writers that pick the format from the extension (PIL, matplotlib).
    ``io_errors``: exception types that ``write`` raises when it cannot write (besides ``OSError``), e.g.
    ``RuntimeError`` for ``torch.save``; these and ``OSError`` become a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = _create_temp(path, suffix)
        mode = stat.S_IMODE(temp.stat().st_mode)  # 0o666 & ~umask
    except OSError as error:
        raise write_failure(path, error) from error
    try:
        write(str(temp))
        if stat.S_IMODE(temp.stat().st_mode) != mode:  # writers that replace the file (safetensors) reset it
            os.chmod(temp, mode)
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if not isinstance(error, PhregError) and isinstance(error, (OSError, *io_errors)):
            raise write_failure(path, error) from error
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` durably (fsync before the rename)."""

    def write(temp: str) -> None:
        with open(temp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())

    return write_atomic(path, write)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())
