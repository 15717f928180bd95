"""Value checks shared by the subcommands: ``argparse`` types that refuse a bad value while the command line
is parsed (exit status 2, the option named by argparse), before anything is built or read.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["device_name", "fraction", "non_negative_int", "positive_float", "positive_int", "resolve_device"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, epochs, sample counts, pixel sizes)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker counts, indices, register counts)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rates)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1) (shift fractions)."""
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def device_name(text: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and available on this machine."""
    import torch

    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda, cuda:N, mps or auto")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine; use --device cpu")
    return text


def resolve_device(name: str):
    """``auto`` -> CUDA if available, else CPU; any other name is checked as by :func:`device_name`."""
    import torch

    from phreg_bench.cli import OptionError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device_name(name)
    except argparse.ArgumentTypeError as error:
        raise OptionError(f"--device {error}") from None
    return torch.device(name)


DEFAULT_BATCH_SIZE = {"cpu": 1, "cuda": 8}  # per device type, from benchmarks/window_batch.py (see --batch-size)


def resolve_batch_size(value: int | None, device) -> int:
    """``--batch-size`` (already checked >= 1 by the parser), or the default for ``device``'s type (a
    ``torch.device``; 8 for types not measured)."""
    return value if value is not None else DEFAULT_BATCH_SIZE.get(device.type, 8)
