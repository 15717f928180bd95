"""Result records: the typed record (schema v1), config hashing, provenance and the on-disk store."""

from phreg_bench.results.records import ResultRecord
from phreg_bench.results.schema import SCHEMA_VERSION, ResultError, dumps_strict, loads_strict
from phreg_bench.results.store import ResultStore, read_result, write_json_atomic

__all__ = [
    "SCHEMA_VERSION",
    "ResultError",
    "ResultRecord",
    "ResultStore",
    "dumps_strict",
    "loads_strict",
    "read_result",
    "write_json_atomic",
]
