"""The backbone factory phreg-bench calls: ``build(argument, *, name, weights, random_init, **options)``."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_bench.backbones.weights import read_state_dict, state_dict_sha256
from phreg_core.errors import ConfigError
from phreg_example_backbone.model import ExampleViT
from phreg_example_backbone.tower import ExampleTokenViT


def build(argument: str | None = None, *, name: str = "example-vit", weights: str | None = None,
          random_init: bool = False, seed: int = 0, pos_resample: str | None = None, **options) -> Backbone:
    """ExampleViT with seeded random weights, or weights from a local safetensors file.

    ``name`` is the name phreg-bench was asked for (``example-vit`` through the entry point,
    ``phreg_example_backbone.factory:build`` as a target); results are filed under it.

    ``options`` are ExampleViT's constructor arguments (``image_size``, ``patch``, ``dim``, ``depth``,
    ``heads``), e.g. ``--backbone-option depth=2``. ``pos_resample`` (``--pos-resample``) chooses another
    positional-embedding resampling policy than the wrapper's ``"bicubic"``.
    """
    check_options(options)  # bad input: one ConfigError naming the option, before any work
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ExampleViT(**options).eval()
    weights_id = f"random-init(seed={seed})"
    if weights:  # phreg-bench's reader: a missing file is one error, nothing is unpickled beyond tensors
        model.load_state_dict(read_state_dict(weights))
        weights_id = str(Path(weights).resolve())
    # what the weights are; geometry and preprocessing are read from the wrapper
    identity = BackboneIdentity(name=name, family="custom", architecture=f"ExampleViT({options})",
                                weights_id=weights_id, weights_sha256=state_dict_sha256(model))
    return Backbone(ExampleTokenViT(model, pos_resample or "bicubic"), identity)


def check_options(options: dict) -> None:
    """ExampleViT's constructor arguments, each a positive integer; raises :class:`ConfigError` naming the
    option (the command line prints it as one line)."""
    known = {key: value.default for key, value in inspect.signature(ExampleViT).parameters.items()}
    for key, value in options.items():
        if key not in known:
            raise ConfigError(f"example-vit has no option {key!r}; it takes {', '.join(sorted(known))}")
        if type(value) is not int or value < 1:
            raise ConfigError(f"example-vit option {key}={value!r} must be a positive integer "
                              f"(default {known[key]})")
