"""Result records: schema v1, validation, config hashing, provenance and the on-disk store."""

from phreg_bench.results.schema import SCHEMA_VERSION, ResultError, dumps_strict, loads_strict, validate
from phreg_bench.results.store import ResultStore, write_json_atomic

__all__ = [
    "SCHEMA_VERSION",
    "ResultError",
    "ResultStore",
    "dumps_strict",
    "loads_strict",
    "validate",
    "write_json_atomic",
]
