"""The shipped Table 2 files: valid, exactly what `phreg_bench.probes.reported` generates, matching the specs."""

from __future__ import annotations

from pathlib import Path

from phreg_bench.probes import reported
from phreg_bench.registries import TASKS
from phreg_bench.results.shipped import reported_dir
from phreg_bench.results.store import ResultStore, read_result, result_files

SHIPPED = reported_dir()


def _table2_files() -> list[Path]:
    files = result_files(SHIPPED)
    return [p for p in files if (read_result(p).citation.table == "Table 2")]


def test_shipped_files_are_the_generated_records():
    expected = {ResultStore(SHIPPED).path_for(r.identity): r for r in reported.records()}
    files = _table2_files()
    assert len(files) == len(expected) == 16 * 3
    for path in files:
        assert read_result(path) == expected[path], f"{path} differs; rerun python -m phreg_bench.probes.reported"


def test_records_match_the_task_specs_and_are_reported():
    for record in reported.records():
        spec = TASKS.get(record.identity.task.name)
        assert record.kind == "reported" and record.citation.source == "arXiv:2505.21501"
        assert record.identity.task.version == spec.version
        assert record.identity.protocol.name == spec.default_protocol
        assert record.metrics.main == spec.metric
        assert record.metrics.higher_is_better == spec.higher_is_better
    row = reported.TABLE2[("dinov2-vit-b14", "phreg")]
    assert row == (84.85, 92.46, 48.66, 61.57, 0.4306, 0.1216, 86.35)  # the log-verified DINOv2 + Ours row
