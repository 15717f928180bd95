"""Schema v1 of a result file: its version, kinds, strict JSON and the error every reader raises.

Strict JSON only (no NaN/Infinity: an absent class is ``null``). The record itself, its validation and the
migration of older files are :class:`phreg_bench.results.records.ResultRecord`. ``kind`` is
``measured`` (run by this tool, with provenance and timings) or ``reported`` (quoted from a paper, with a
citation and no provenance).
"""

from __future__ import annotations

import json
from typing import Any

from phreg_core.errors import PhregError

SCHEMA_VERSION = 1
KINDS = ("measured", "reported")
PRECISIONS = ("fp32", "bf16", "fp16")  # the ``precision`` a measured run records (absent in older files)


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

