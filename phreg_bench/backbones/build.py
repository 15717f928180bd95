"""The one way to build a backbone by name: registry lookup, type check and naming.

``build_backbone(name, ...)`` accepts a catalogue name or alias, a pass-through ``prefix:argument``
(``timm:<model>``, ``open_clip:<arch>/<tag>``, ``hf-hub:<repo>``) or a ``package.module:factory`` target. The
name is settled here, once, and handed to the factory, which puts it into the backbone's frozen
:class:`~phreg_bench.backbones.base.BackboneIdentity`: a registered name or alias becomes its canonical name,
anything else stays as written. A factory that does not declare a ``name`` parameter keeps the name it
gives itself.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from phreg_bench.backbones.base import Backbone
from phreg_bench.backbones.catalogue import BACKBONES
from phreg_bench.registry import Factory
from phreg_core.errors import ConfigError, MissingFileError


def takes_name(factory: Any) -> bool:
    """Whether a backbone factory (as :meth:`Registry.get` returns it) declares a ``name`` keyword."""
    target = factory.target if isinstance(factory, Factory) else factory
    try:
        parameter = inspect.signature(target).parameters.get("name")
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def build_backbone(name: str, /, *, weights: str | None = None, random_init: bool = False,
                   **options: Any) -> Backbone:
    """Build the backbone ``name`` with ``options`` (the factory's keyword arguments).

    Raises :class:`~phreg_bench.registry.RegistryError` for an unknown name (with suggestions),
    :class:`~phreg_bench.registry.RegistryTypeError` when the factory makes something other than a
    :class:`Backbone`, :class:`ConfigError` for a ``name`` option (the name is the one asked for) and
    :class:`MissingFileError` for a ``weights`` file that does not exist (checked here, before any factory
    runs, so that third-party factories fail the same way).
    """
    if weights is not None and not Path(weights).expanduser().is_file():
        raise MissingFileError(f"weights file {weights} does not exist (--weights takes a local weights file: "
                               "safetensors or a PyTorch state dict)")
    if "name" in options:
        raise ConfigError(f"backbone {name!r}: 'name' is not a backbone option; a backbone is named as it is asked for")
    factory = BACKBONES.get(name)
    if takes_name(factory):
        options["name"] = BACKBONES.canonical(name) if name in BACKBONES else name
    return factory(weights=weights, random_init=random_init, **options)
