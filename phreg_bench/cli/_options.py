"""What several subcommands share about their options.

* value checks: ``argparse`` types that refuse a bad value while the command line is parsed (exit status 2,
  the option named by argparse), before anything is built or read;
* option groups: :func:`add_runtime_options` (device, precision, batch size, workers, seed) and
  :func:`add_pos_resample_option`, with :func:`with_pos_resample`;
* ``KEY=VALUE`` lists (:func:`parse_assignments`) and the resolution of ``--device`` / ``--batch-size``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import yaml

from phreg_bench.cli import CliError, OptionError
from phreg_core.pos_embed import POLICY_NAMES

__all__ = ["add_pos_resample_option", "add_runtime_options", "device_name", "fraction", "non_negative_int",
           "parse_assignments", "positive_float", "positive_int", "resolve_batch_size", "resolve_device",
           "with_pos_resample"]


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


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as YAML scalars)."""
    parsed: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            parsed[key.strip().replace("-", "_")] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as error:
            raise CliError(f"{flag} {item}: the value is not a YAML scalar ({' '.join(str(error).split())})") \
                from error
    return parsed


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that run models (device, precision, batch size, ...)."""
    parser.add_argument("--device", default="auto", type=device_name,
                        help="cpu, cuda, cuda:N, mps or auto (default: auto)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="autocast dtype of the backbone forward only; heads, losses and metrics stay fp32. "
                        "Part of the result identity (default: fp32)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images (ovseg: sliding windows) per forward pass (default: 1 on CPU, 8 on CUDA; on "
                        "2 CPU cores 8 windows at a time took 1.16-1.26x as long as one at a time for ViT-B/16, "
                        "measured by benchmarks/window_batch.py)")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="data-loading workers (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (recorded; default: 0)")


def add_pos_resample_option(parser: argparse.ArgumentParser) -> None:
    """``--pos-resample NAME``: the positional-embedding resampling policy of the backbone(s)."""
    parser.add_argument("--pos-resample", choices=POLICY_NAMES, metavar="NAME",
                        help="positional-embedding resampling at other input sizes, one of "
                        f"{', '.join(POLICY_NAMES)} (default: the backbone's reference policy; recorded)")


def with_pos_resample(options: dict[str, Any], policy: str | None) -> dict[str, Any]:
    """Backbone factory options plus ``pos_resample`` from ``--pos-resample`` (one place to give it)."""
    if policy is None:
        return options
    if options.get("pos_resample") not in (None, policy):
        raise CliError(f"--pos-resample {policy} contradicts --backbone-option pos_resample="
                       f"{options['pos_resample']}; give the policy once")
    return {**options, "pos_resample": policy}
