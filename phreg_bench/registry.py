"""A generic, typed, lazy registry: backbones, methods, datasets, task families, tasks and suites.

Each subsystem owns its registry and declares its built-in entries in its ``catalogue`` module
(``BACKBONES`` in :mod:`phreg_bench.backbones.catalogue`, ``METHODS`` in :mod:`phreg_bench.methods.catalogue`,
``DATASETS`` in :mod:`phreg_bench.datasets.catalogue`, ``TASKS`` / ``TASK_FAMILIES`` / ``SUITES`` in
:mod:`phreg_bench.tasks.catalogue`); :mod:`phreg_bench.registries` re-exports them. This module imports
none of them.

Entries are objects or ``"package.module:attr"`` strings imported on first use, so listing a registry
imports nothing heavy. A registry may also declare its built-ins with a ``builtins`` loader that runs on the
first lookup (the task specs are YAML files, read then rather than at import). Third-party code adds entries
through

* the decorator: ``@BACKBONES.register("my-vit", aliases=("mv",))``;
* an entry point in the group ``phreg_bench.<kind>`` (``backbones``, ``methods``, ``tasks``), whose value
  is a ``module:attr`` target;
* naming ``package.module:factory`` directly wherever a registered name is accepted.

:meth:`Registry.get` is the one lookup verb. A registry of factories (``makes=Backbone``) checks what they
make: a class entry must subclass ``makes``; any other callable is returned wrapped in a :class:`Factory`
whose call raises :class:`RegistryTypeError` naming the entry when the result is not a ``makes``. A registry
of values (``instance_of=TaskSpec``) checks the value itself. Pass-through prefixes are ordinary factory
entries whose name ends with ``':'``: ``get("timm:vit_small_patch16_224")`` is the ``timm:`` factory with
``"vit_small_patch16_224"`` bound as its first argument.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from phreg_core.errors import PhregError

T = TypeVar("T")


class RegistryError(PhregError, LookupError):
    """An unknown name, a duplicate registration or a target that cannot be imported."""


class RegistryTypeError(RegistryError, TypeError):
    """A registry entry that is (or makes) an object of the wrong type; the message names the entry."""


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
    """One registered name: its target, aliases, listing metadata and where it came from."""

    name: str
    target: Any  # an object, or a "module:attr" string until resolved
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"

    def resolve(self) -> Any:
        """The target object (importing a ``module:attr`` string once), unchecked."""
        if isinstance(self.target, str):
            self.target = import_target(self.target)
        return self.target


def _describe(target: Any) -> str:
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    return f"{module}:{name}" if module and name else type(target).__name__


class Factory(Generic[T]):
    """A registry entry's factory: calls ``target(*bound, *args, **kwargs)`` and checks that it made a ``T``.

    Attributes other than ``target``, ``name`` and ``bound`` are read from the target, so metadata a factory
    carries (a catalogue entry's ``hub_repo``, a method's option schema) stays reachable.
    """

    def __init__(self, registry: Registry[Any], name: str, target: Callable[..., T], bound: tuple[Any, ...] = ()):
        self.registry, self.name, self.target, self.bound = registry, name, target, bound

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        made = self.target(*self.bound, *args, **kwargs)
        self.registry.check_made(self.name, self.target, made)
        return made

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or "target" not in self.__dict__:
            raise AttributeError(attr)
        return getattr(self.__dict__["target"], attr)

    def __repr__(self) -> str:
        bound = f" bound to {self.bound[0]!r}" if self.bound else ""
        return f"<{self.registry.kind} factory {self.name!r}{bound}: {_describe(self.target)}>"


class Registry(Generic[T]):
    """Named entries of one kind, with aliases, lazy targets, entry points, suggestions and a type check.

    ``T`` is what :meth:`get` returns. ``makes`` (a type or a ``"module:attr"`` string, resolved at the
    first check so declaring a registry imports nothing heavy): entries are factories of that type.
    ``instance_of``: entries are values of that type. ``builtins``: a loader ``(registry) -> None`` that adds
    the built-in entries, run once before the first lookup.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None, *, makes: type | str | None = None,
                 instance_of: type | str | None = None, builtins: Callable[[Registry[T]], None] | None = None):
        if makes is not None and instance_of is not None:
            raise ValueError("a registry holds factories (makes=) or values (instance_of=), not both")
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._plugins_loaded = entry_point_group is None
        self._builtins = builtins
        self._makes, self._instance_of = makes, instance_of

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
        self._load_builtins()
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

    def _load_builtins(self) -> None:
        loader, self._builtins = self._builtins, None
        if loader is not None:
            loader(self)

    def load_plugins(self) -> None:
        """Add the built-ins (once), then every entry point of this registry's group (once)."""
        self._load_builtins()
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for point in entry_points(group=self.entry_point_group):
            if point.name not in self._entries:
                self.add(point.name, point.value, source=f"plugin:{point.dist.name if point.dist else '?'}")

    # -- lookup -------------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object for a name or alias, a ``package.module:attr`` target, or ``prefix:argument``.

        Factory registries return a class entry itself (checked to subclass ``makes``) and any other factory
        as a :class:`Factory` that checks what it makes; value registries check the value. Raises
        :class:`RegistryError` with suggestions for an unknown name and :class:`RegistryTypeError` naming the
        entry for one of the wrong type.
        """
        self.load_plugins()
        bound: tuple[Any, ...] = ()
        if name in self._entries or name in self._aliases:
            entry = self.entry(name)
            label, target = entry.name, entry.resolve()
        else:
            prefix, sep, rest = name.partition(":")
            if sep and f"{prefix}:" in self._entries:
                label, target, bound = f"{prefix}:", self._entries[f"{prefix}:"].resolve(), (rest,)
            elif sep and rest and all(part.isidentifier() for part in prefix.split(".")):
                label, target = name, import_target(name)
            else:
                raise RegistryError(self._unknown_message(name))
        return self._checked(label, target, bound)

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases; raises with suggestions."""
        self.load_plugins()
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise RegistryError(self._unknown_message(name))

    def entry(self, name: str) -> Entry:
        """The :class:`Entry` of a name or alias (its metadata, aliases and source), without checking it."""
        return self._entries[self.canonical(name)]

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

    # -- type checks --------------------------------------------------------------------------------
    def _type(self, declared: type | str) -> type:
        return import_target(declared) if isinstance(declared, str) else declared

    def _checked(self, name: str, target: Any, bound: tuple[Any, ...]) -> Any:
        if self._instance_of is not None:
            expected = self._type(self._instance_of)
            if not isinstance(target, expected):
                raise RegistryTypeError(f"{self.kind} {name!r} ({_describe(target)}) is a {type(target).__name__}, "
                                        f"not a {expected.__name__}")
            return target
        if self._makes is None:
            return Factory(self, name, target, bound) if bound else target
        if not callable(target):
            raise RegistryTypeError(f"{self.kind} {name!r} is a {type(target).__name__}, not a factory "
                                    f"(a callable that makes a {self._type(self._makes).__name__})")
        if isinstance(target, type) and not bound:
            expected = self._type(self._makes)
            if not issubclass(target, expected):
                raise RegistryTypeError(f"{self.kind} {name!r} ({_describe(target)}) is not a subclass of "
                                        f"{expected.__name__}")
            return target
        return Factory(self, name, target, bound)

    def check_made(self, name: str, target: Any, made: Any) -> None:
        """Raise :class:`RegistryTypeError` unless ``made`` (what entry ``name`` made) is a ``makes``."""
        if self._makes is None:
            return
        expected = self._type(self._makes)
        if not isinstance(made, expected):
            raise RegistryTypeError(f"{self.kind} {name!r}: its factory {_describe(target)} returned a "
                                    f"{type(made).__name__}, not a {expected.__name__}")

    def _unknown_message(self, name: str) -> str:
        candidates = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (see `phreg-bench ls {self.kind}s`)"
