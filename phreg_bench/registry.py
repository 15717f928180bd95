"""A generic, lazy registry used for backbones, methods, tasks and suites.

Entries are either objects or ``"package.module:attr"`` strings resolved on first use, so listing the
registry imports nothing heavy. Third-party code adds entries through

* the decorator: ``@BACKBONES.register("my-vit", aliases=("mv",))``;
* an entry point in the group ``phreg_bench.<kind>`` (``backbones``, ``methods``, ``tasks``), whose value
  is a ``module:attr`` target;
* naming ``package.module:factory`` directly wherever a registered name is accepted.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from phreg_core.errors import PhregError


class RegistryError(PhregError, LookupError):
    """An unknown name, a duplicate registration or a target that cannot be imported."""


def import_target(target: str) -> Any:
    """Import ``"package.module:attr.sub"`` and return the attribute."""
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise RegistryError(f"target {target!r} must look like 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise RegistryError(f"cannot import module {module_name!r} for {target!r}: {error}") from error
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as error:
            raise RegistryError(f"module {module_name!r} has no attribute {attr_path!r}") from error
    return obj


@dataclass
class Entry:
    name: str
    target: Any  # an object, or a "module:attr" string until resolved
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"

    def resolve(self) -> Any:
        if isinstance(self.target, str):
            self.target = import_target(self.target)
        return self.target


class Registry:
    """Named entries of one kind, with aliases, lazy targets, entry points and suggestions."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None

    # -- adding -------------------------------------------------------------------------------------
    def add(
        self,
        name: str,
        target: Any,
        *,
        aliases: tuple[str, ...] = (),
        source: str = "builtin",
        replace: bool = False,
        **metadata: Any,
    ) -> Entry:
        """Register ``target`` under ``name``. Duplicates are refused unless ``replace``."""
        taken = [n for n in (name, *aliases) if n in self._entries or n in self._aliases]
        if taken and not replace:
            raise RegistryError(f"{self.kind} name(s) {', '.join(map(repr, taken))} already registered")
        entry = Entry(name=name, target=target, aliases=tuple(aliases), metadata=metadata, source=source)
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def register(self, name: str, *, aliases: tuple[str, ...] = (), **metadata: Any) -> Callable:
        """Decorator form of :meth:`add`."""

        def decorate(obj: Any) -> Any:
            self.add(name, obj, aliases=aliases, source="decorator", **metadata)
            return obj

        return decorate

    def load_plugins(self) -> None:
        """Add every entry point of this registry's group (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for point in entry_points(group=self.entry_point_group):
            if point.name not in self._entries:
                self.add(point.name, point.value, source=f"plugin:{point.dist.name if point.dist else '?'}")

    # -- lookup -------------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; raises with suggestions."""
        self.load_plugins()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise RegistryError(self._unknown_message(name))

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def get(self, name: str) -> Any:
        """Resolve a name or alias (or a ``package.module:attr`` target) to its object."""
        obj, argument = self.resolve(name)
        if argument is not None:
            raise RegistryError(f"{self.kind} {name!r} is a pass-through prefix; call resolve() instead")
        return obj

    def resolve(self, name: str) -> tuple[Any, str | None]:
        """Resolve ``name`` to ``(object, argument)``.

        Registered names and aliases give ``(object, None)``. Entries whose name ends with ``':'`` are
        pass-through prefixes: ``timm:vit_small_patch16_224`` gives ``(timm entry, 'vit_small_patch16_224')``.
        Any other ``package.module:attr`` string is imported directly.
        """
        self.load_plugins()
        if name in self._entries or name in self._aliases:
            return self.entry(name).resolve(), None
        prefix, sep, rest = name.partition(":")
        if sep and f"{prefix}:" in self._entries:
            return self._entries[f"{prefix}:"].resolve(), rest
        if sep and rest and all(part.isidentifier() for part in prefix.split(".")):
            return import_target(name), None
        raise RegistryError(self._unknown_message(name))

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except RegistryError:
            return False
        return True

    def __iter__(self) -> Iterator[Entry]:
        self.load_plugins()
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> list[str]:
        return [entry.name for entry in self]

    def _unknown_message(self, name: str) -> str:
        candidates = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (see `phreg-bench ls {self.kind}s`)"
