"""Protocol settings: one frozen dataclass per task family, resolved from a preset plus overrides.

A task spec's protocol preset (``tasks/<family>/<task>.yaml``) and the run's ``--protocol-override KEY=VALUE``
pairs are merged, then every value is converted to its field's type and range-checked, *after* the
overrides, so a typo (``iter=5``) or a bad value (``iters=-1``) is refused before any model is built. The
resolved settings (every field, in JSON form) are recorded in the result and enter its config hash.

Types understood by :func:`convert`: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``,
``int | Literal["auto"]``, ``tuple[X, ...]`` / ``tuple[X, Y]`` (given as YAML lists) and nested settings
dataclasses (given as YAML mappings; an override mapping is merged into the preset's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from phreg_core.errors import PhregError

OVERRIDE_FLAG = "--protocol-override"
PROTOCOL_FLAG = "--protocol"


class ProtocolError(PhregError, ValueError):
    """An unknown protocol name, an unknown protocol setting or a setting of the wrong type or range."""


class _Invalid(Exception):
    """Raised by :meth:`Settings.validate` / :func:`convert`; ``resolve`` names where the value came from."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key, self.message = key, message


def require(key: str, condition: bool, message: str) -> None:
    """Range check inside :meth:`Settings.validate`: ``message`` says what ``key`` must be."""
    if not condition:
        raise _Invalid(key, message)


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def convert(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (a YAML scalar, list or mapping) as the type ``annotation``; :class:`_Invalid` otherwise."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise _Invalid(key, f"must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return convert(value, option, key)
            except _Invalid as error:
                errors.append(error.message)
        raise _Invalid(key, " or ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Invalid(key, f"must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(item, args[0], key) for item in value)
        if len(value) != len(args):
            raise _Invalid(key, f"must be a list of {len(args)} values, got {value!r}")
        return tuple(convert(item, arg, key) for item, arg in zip(value, args, strict=True))
    if isinstance(annotation, type) and issubclass(annotation, Settings):
        if not isinstance(value, dict):
            raise _Invalid(key, f"must be a mapping with keys {annotation.keys()}, got {value!r}")
        try:
            return annotation.from_dict(value, where=key)
        except ProtocolError as error:
            raise _Invalid(key, str(error)) from None  # names the inner key
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Invalid(key, f"must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise _Invalid(key, f"must be an integer, got {value!r}")
    if annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads ``1e-3`` (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):
            raise _Invalid(key, f"must be a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, str) and value:
            return value
        raise _Invalid(key, f"must be a non-empty string, got {value!r}")
    raise TypeError(f"settings field {key!r}: unsupported type {annotation!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    return value


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of every family's settings; subclasses add fields and extend :meth:`validate`.

    ``RESERVED`` fields are set by the tool (the preset name, the probe budget), never by an override.
    """

    RESERVED: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Range checks across fields; call :func:`require` for each."""

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        """The settable keys (what ``--protocol-override`` accepts)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in cls.RESERVED]

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "settings",
                  sources: dict[str, str] | None = None) -> Settings:
        """Convert and validate ``values`` (every key must be a field); errors name ``sources[key]`` or ``where``."""
        sources = sources or {}

        def origin(key: str) -> str:
            return sources.get(key, f"{where}: setting {key!r}")

        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            key = unknown[0]
            raise ProtocolError(f"{origin(key)}: unknown setting; valid keys: {', '.join(sorted(cls.keys()))}")
        hints = typing.get_type_hints(cls)
        converted: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            if item.name not in values:
                if item.default is dataclasses.MISSING and item.default_factory is dataclasses.MISSING:
                    raise ProtocolError(f"{where}: setting {item.name!r} is missing (set it in the preset or "
                                        f"with {OVERRIDE_FLAG} {item.name}=VALUE)")
                continue
            try:
                converted[item.name] = convert(values[item.name], hints[item.name], item.name)
            except _Invalid as error:
                raise ProtocolError(f"{origin(error.key)}: {error.message}") from None
        settings = cls(**converted)
        try:
            settings.validate()
        except _Invalid as error:
            raise ProtocolError(f"{origin(error.key)}: {error.message}") from None
        return settings

    @classmethod
    def resolve(cls, *, task: str, protocol: str, preset: dict[str, Any], overrides: dict[str, Any],
                fixed: dict[str, Any] | None = None) -> Settings:
        """``preset`` updated with ``overrides`` (nested mappings merged) and the tool's ``fixed`` values.

        Errors name ``--protocol-override KEY`` for a value that came from the command line, the task and
        preset otherwise.
        """
        reserved = sorted(set(overrides) & set(cls.RESERVED))
        if reserved:
            raise ProtocolError(f"{OVERRIDE_FLAG} {reserved[0]}: set by the tool, not an override "
                                f"({'use --budget' if reserved[0] == 'budget' else 'use --protocol'})")
        unknown = sorted(set(overrides) - set(cls.keys()))
        if unknown:
            raise ProtocolError(f"{OVERRIDE_FLAG} {unknown[0]}: {task} (protocol {protocol!r}) has no setting "
                                f"{unknown[0]!r}; valid keys: {', '.join(sorted(cls.keys()))}")
        values = dict(preset)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        values.update(fixed or {})
        sources = {key: f"{OVERRIDE_FLAG} {key}={overrides[key]!r}" for key in overrides}
        return cls.from_dict(values, where=f"{task} protocol {protocol!r}", sources=sources)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuples as lists, nested settings as mappings): what is recorded and hashed."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class NamedSettings(Settings):
    """Settings of one protocol preset; ``name`` is the preset's name (``phreg``, ``paper``, ...)."""

    RESERVED: ClassVar[tuple[str, ...]] = ("name",)
    name: str


def protocol_names(specs) -> list[str]:
    """Every protocol preset name of ``specs`` (sorted, unique)."""
    return sorted({name for spec in specs for name in spec.protocols})
