"""Method options (``-o KEY=VALUE``): each built-in method declares a schema, checked in one place.

A factory decorated with :func:`method_options` checks its keyword options on every call (the command line,
``viz`` and in-process use alike), and :func:`validate_method_options` checks a method's options by name
before any model is built. Values keep their type: an ``int`` option takes an integer literal only
(``views=2.5`` or ``views=ten`` is refused, never truncated), a ``float`` option takes any finite number.

A third-party method without a schema gets its options unchecked here; its factory checks them.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from phreg_core.errors import ConfigError

__all__ = ["MethodOptionError", "Option", "check_options", "describe_options", "inner_method_options",
           "method_options", "validate_method_options"]

_REQUIRED = object()


class MethodOptionError(ConfigError):
    """A method option that the method does not have, or a value of the wrong type or range."""


@dataclass(frozen=True)
class Option:
    """One option: its type (``int``, ``float``, ``str``, ``bool`` or ``Path``) and range.

    ``minimum``/``maximum`` are inclusive bounds, ``above``/``below`` exclusive ones. A ``Path`` option must
    name an existing file or folder. The default is the factory's keyword default (none: required).
    """

    kind: type
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    below: float | None = None
    above: float | None = None
    check: Callable[[Any], str | None] | None = None  # a further check: the reason a value is refused, or None
    default: Any = _REQUIRED  # filled in from the factory's signature by method_options

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def describe(self) -> str:
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                Path: "an existing path"}[self.kind]
        bounds = []
        if self.minimum is not None:
            bounds.append(f">= {self.minimum:g}")
        if self.above is not None:
            bounds.append(f"> {self.above:g}")
        if self.maximum is not None:
            bounds.append(f"<= {self.maximum:g}")
        if self.below is not None:
            bounds.append(f"< {self.below:g}")
        return kind + (f" {' and '.join(bounds)}" if bounds else "")


def _convert(method: str, name: str, option: Option, value: Any) -> Any:
    given = value

    def refuse(why: str) -> MethodOptionError:
        default = "" if option.required else f" (default {option.default!r})"
        return MethodOptionError(f"method {method!r}: option {name}={given!r} {why}; it must be "
                                 f"{option.describe()}{default}")

    if option.kind is int:
        if type(value) is not int:
            raise refuse("is not an integer")
    elif option.kind is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise refuse("is not a finite number")
        value = float(value)
    elif option.kind is bool:
        if type(value) is not bool:
            raise refuse("is not true or false")
    elif option.kind is str:
        if isinstance(value, os.PathLike):  # a path given in-process is its string
            value = os.fspath(value)
        if not isinstance(value, str):
            raise refuse("is not a string")
    elif option.kind is Path:
        if not isinstance(value, str | os.PathLike) or not str(value):
            raise refuse("is not a path")
        if not Path(value).exists():
            raise refuse("does not exist")
        value = str(value)
    if (option.minimum is not None and value < option.minimum) or (option.above is not None and value <= option.above):
        raise refuse("is too small")
    if option.maximum is not None and value > option.maximum:
        raise refuse("is too large")
    if option.below is not None and value >= option.below:
        raise refuse("is too large")
    reason = option.check(value) if option.check is not None else None
    if reason:  # the check's reason says what is wanted; the type is already right
        raise MethodOptionError(f"method {method!r}: option {name}={given!r} {reason}")
    return value


def describe_options(schema: dict[str, Option]) -> str:
    """``views (an integer >= 1, default 10), inner (a string, default 'raw')`` or ``no options``."""
    if not schema:
        return "no options"
    return ", ".join(f"{name} ({option.describe()}{'' if option.required else f', default {option.default!r}'})"
                     for name, option in schema.items())


def check_options(method: str, schema: dict[str, Option], options: dict[str, Any],
                  forward: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """The given options converted to their types; raises :class:`MethodOptionError` naming ``method``.

    Missing options are left to the factory's defaults. ``forward(given, rest)`` checks the options the
    schema does not name (``tta`` checks them as its inner method's) and returns them converted; without
    it they are an error.
    """
    checked = {name: _convert(method, name, schema[name], value) for name, value in options.items()
               if name in schema}
    missing = [name for name, option in schema.items() if option.required and name not in options]
    if missing:
        option = schema[missing[0]]
        raise MethodOptionError(f"method {method!r} needs option {missing[0]!r} ({option.describe()}): {option.help}")
    rest = {name: value for name, value in options.items() if name not in schema}
    if forward is not None:
        checked.update(forward(checked, rest))
    elif rest:
        raise MethodOptionError(f"method {method!r} has no option {', '.join(map(repr, sorted(rest)))}; it takes "
                                f"{describe_options(schema)}")
    return checked


def method_options(name: str, forward: Callable | None = None, **schema: Option) -> Callable:
    """Decorate ``factory(backbone, **options)`` so that every call checks ``options`` against ``schema``.

    Defaults come from the factory's signature (an option without one is required).
    """

    def decorate(factory: Callable) -> Callable:
        parameters = inspect.signature(factory).parameters
        full = {key: replace(option, default=parameters[key].default
                             if key in parameters and parameters[key].default is not inspect.Parameter.empty
                             else _REQUIRED)
                for key, option in schema.items()}

        @functools.wraps(factory)
        def build(backbone, **options: Any):
            return factory(backbone, **check_options(name, full, options, forward))

        build.option_schema = full  # type: ignore[attr-defined]
        build.option_forward = forward  # type: ignore[attr-defined]
        return build

    return decorate


def validate_method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` for the method registered as ``method`` (before any model is built).

    Returns the converted options for methods with a schema, else ``options`` unchanged. Raises
    :class:`MethodOptionError` naming the method, or ``RegistryError`` for an unknown method.
    """
    from phreg_bench.methods.catalogue import METHODS

    factory = METHODS.get(method)
    schema = getattr(factory, "option_schema", None)
    if schema is None:
        return dict(options)
    return check_options(method, schema, options, getattr(factory, "option_forward", None))


def inner_method_options(wrapper: str, examples: str) -> Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]:
    """The ``forward`` of a method that wraps another (``tta``, ``dvt``): the options the wrapper does not take
    are its ``inner`` method's (default ``raw``), checked against that method's schema and named as the
    wrapper's in errors; a wrapper cannot wrap itself (``examples`` lists inner methods for that message)."""

    def forward(given: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
        from phreg_bench.methods.catalogue import METHODS

        inner = given.get("inner", "raw")
        if METHODS.canonical(inner) == wrapper:
            raise MethodOptionError(f"method {wrapper!r} cannot wrap itself; choose another inner method ({examples})")
        factory = METHODS.get(inner)
        schema = getattr(factory, "option_schema", None)
        if schema is None:
            return rest
        unknown = sorted(set(rest) - set(schema))
        if unknown:
            own = METHODS.get(wrapper).option_schema
            raise MethodOptionError(
                f"method {wrapper!r} has no option {', '.join(map(repr, unknown))}; it takes "
                f"{describe_options(own)}, and the options of its inner method {inner!r}: {describe_options(schema)}")
        return check_options(f"{wrapper} (inner {inner})", schema, rest, getattr(factory, "option_forward", None))

    return forward
