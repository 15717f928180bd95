"""Schema v1 of a result file: one backbone × method × task × protocol.

Strict JSON only (no NaN/Infinity: an absent class is ``null``), validated on every read. ``kind`` is
``measured`` (run by this tool, with provenance and timings) or ``reported`` (quoted from a paper, with a
citation and no provenance).
"""

from __future__ import annotations

import json
import math
from typing import Any

from phreg_core.errors import PhregError

SCHEMA_VERSION = 1
KINDS = ("measured", "reported")


class ResultError(PhregError, ValueError):
    """A result file or record that does not follow the schema."""


def _reject_constant(name: str) -> Any:
    raise ResultError(f"non-standard JSON constant {name} (NaN/Infinity are not allowed; use null)")


def dumps_strict(record: dict[str, Any]) -> str:
    """Serialise with ``allow_nan=False``: a NaN anywhere is an error, never silently written."""
    try:
        return json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as error:
        raise ResultError(f"record is not strict JSON: {error}") from error


def loads_strict(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


# field -> (type(s), required for kinds)
_TOP_LEVEL: dict[str, tuple[type | tuple[type, ...], tuple[str, ...]]] = {
    "schema_version": (int, KINDS),
    "kind": (str, KINDS),
    "task": (dict, KINDS),
    "backbone": (dict, KINDS),
    "method": (dict, KINDS),
    "protocol": (dict, KINDS),
    "metrics": (dict, KINDS),
    "status": (dict, KINDS),
    "config_hash": (str, KINDS),
    "timings": (dict, ("measured",)),
    "provenance": (dict, ("measured",)),
    "citation": (dict, ("reported",)),
}
PRECISIONS = ("fp32", "bf16", "fp16")  # the ``precision`` a measured run records (absent in older files)
_NESTED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "task": {"name": str, "family": str, "version": str},
    "backbone": {"name": str, "weights_id": str},
    "method": {"name": str, "config": dict},
    "protocol": {"name": str, "settings": dict},
    "metrics": {"main": str, "higher_is_better": bool, "values": dict},
    "status": {"complete": bool, "num_samples": int},
    "citation": {"source": str},
}


def _check_numbers(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ResultError(f"{where}: non-finite number {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_numbers(item, f"{where}[{index}]")


def validate(record: Any) -> dict[str, Any]:
    """Raise :class:`ResultError` naming the first problem; return the record if it is valid."""
    if not isinstance(record, dict):
        raise ResultError("a result must be a JSON object")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise ResultError(f"schema_version {record.get('schema_version')!r} is not {SCHEMA_VERSION}")
    kind = record.get("kind")
    if kind not in KINDS:
        raise ResultError(f"kind {kind!r} must be one of {KINDS}")
    for key, (expected, kinds) in _TOP_LEVEL.items():
        if kind in kinds and not isinstance(record.get(key), expected):
            raise ResultError(f"field {key!r} is missing or not a {getattr(expected, '__name__', expected)}")
    for section, fields in _NESTED.items():
        if section not in record:
            continue
        if not isinstance(record[section], dict):
            raise ResultError(f"field {section!r} is not an object")
        for key, expected in fields.items():
            value = record[section].get(key)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ResultError(f"field {section}.{key} is missing or of the wrong type")
    if "precision" in record and record["precision"] not in PRECISIONS:
        raise ResultError(f"field 'precision' must be one of {PRECISIONS}, got {record['precision']!r}")
    values = record["metrics"]["values"]
    main = record["metrics"]["main"]
    if main not in values or not isinstance(values[main], (int, float)) or isinstance(values[main], bool):
        raise ResultError(f"metrics.values has no number for the main metric {main!r}")
    _check_numbers(record, "result")
    return record
