"""Leaderboard rules: complete-only means, delta vs raw, exclusions with reasons, escaping."""

from __future__ import annotations

from pathlib import Path

import pytest

from phreg_bench.leaderboard import build_table, to_html, to_markdown, write_index
from phreg_bench.registries import SUITES
from phreg_bench.results.records import measured_record, reported_record
from phreg_bench.results.store import ResultStore, write_json_atomic

SUITE = {"description": "two tasks", "tasks": ["synthetic/segmentation", "synthetic/other"]}


@pytest.fixture(autouse=True)
def second_synthetic_task(monkeypatch):
    """A second registered task so that rows can be complete or incomplete."""
    from dataclasses import replace

    from phreg_bench.registries import TASKS

    spec = replace(TASKS.get("synthetic/segmentation"), name="synthetic/other")
    monkeypatch.setitem(TASKS._entries, "synthetic/other", type(TASKS.entry("synthetic/segmentation"))(
        name="synthetic/other", target=spec))
    yield


def measured(store: ResultStore, backbone: str, method: str, task: str, value: float, *, version: str = "1",
             protocol: str = "default", complete: bool = True, finished: str = "2026-01-01T00:00:00+00:00") -> Path:
    record = measured_record(
        task={"name": task, "family": "synthetic", "version": version, "spec_hash": "h"},
        backbone={"name": backbone, "weights_id": "w", "weights_sha256": "s"},
        method={"name": method, "config": {}}, protocol={"name": protocol, "settings": {"budget": "full"}},
        seed=0, limit=None if complete else 2,
    )
    record.update(metrics={"main": "mIoU", "higher_is_better": True, "values": {"mIoU": value}, "per_class": {}},
                  status={"complete": complete, "num_samples": 2, "expected_samples": 4,
                          "limit": None if complete else 2},
                  timings={}, provenance={"finished_at": finished, "seed": 0})
    return store.write(record)


def test_mean_only_for_complete_rows_and_delta_against_raw(tmp_path):
    store = ResultStore(tmp_path)
    files = [
        measured(store, "vit", "raw", "synthetic/segmentation", 40.0),
        measured(store, "vit", "raw", "synthetic/other", 20.0),
        measured(store, "vit", "phreg", "synthetic/segmentation", 50.0),
        measured(store, "vit", "phreg", "synthetic/other", 26.0),
        measured(store, "vit", "naclip", "synthetic/segmentation", 45.0),
    ]
    board = build_table(files, "s", SUITE)
    rows = {(r["backbone"], r["method"]): r for r in board["rows"]}
    assert rows[("vit", "raw")]["mean"] == pytest.approx(30.0)
    assert rows[("vit", "phreg")]["mean"] == pytest.approx(38.0)
    assert rows[("vit", "phreg")]["mean_delta_vs_raw"] == pytest.approx(8.0)
    assert rows[("vit", "phreg")]["delta_vs_raw"] == {"synthetic/segmentation": 10.0, "synthetic/other": 6.0}
    assert rows[("vit", "naclip")]["mean"] is None and not rows[("vit", "naclip")]["complete"]
    assert board["rows"][0]["method"] == "phreg"  # sorted by mean


def test_excluded_files_carry_reasons(tmp_path):
    store = ResultStore(tmp_path)
    files = [
        measured(store, "vit", "raw", "synthetic/segmentation", 40.0, version="0"),
        measured(store, "vit", "raw", "synthetic/other", 20.0, protocol="other"),
        measured(store, "vit", "x", "synthetic/other", 20.0, complete=False),
    ]
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema_version": 1, "kind": "measured"')
    board = build_table([*files, broken], "s", SUITE)
    reasons = " ".join(item["reason"] for item in board["excluded"])
    assert "version mismatch" in reasons and "protocol mismatch" in reasons
    assert "partial run" in reasons and "invalid" in reasons
    assert board["rows"] == []


def test_newer_run_supersedes_older(tmp_path):
    store = ResultStore(tmp_path)
    old = measured(store, "vit", "raw", "synthetic/segmentation", 1.0, finished="2026-01-01T00:00:00+00:00")
    store2 = ResultStore(tmp_path / "again")
    new = measured(store2, "vit", "raw", "synthetic/segmentation", 2.0, finished="2026-02-01T00:00:00+00:00")
    board = build_table([new, old], "s", SUITE)
    assert board["rows"][0]["values"]["synthetic/segmentation"] == 2.0
    assert any("superseded" in item["reason"] for item in board["excluded"])


def test_reported_rows_are_marked_and_kept_apart(tmp_path):
    store = ResultStore(tmp_path)
    files = [measured(store, "vit", "raw", "synthetic/segmentation", 40.0)]
    for task, value in (("synthetic/segmentation", 60.0), ("synthetic/other", 30.0)):
        record = reported_record(task={"name": task, "family": "synthetic", "version": "1"}, backbone="vit",
                                 method="raw", protocol="default", main_metric="mIoU", higher_is_better=True,
                                 values={"mIoU": value}, citation={"source": "arXiv:0000", "table": "1"})
        path = tmp_path / "reported" / f"{task.replace('/', '_')}.json"
        write_json_atomic(path, record)
        files.append(path)
    board = build_table(files, "s", SUITE)
    kinds = {r["kind"]: r for r in board["rows"]}
    assert kinds["reported"]["mean"] == pytest.approx(45.0)
    assert kinds["measured"]["mean"] is None  # the measured row is incomplete; never filled from the paper
    assert "vit †" in to_markdown(board)


def test_hostile_names_are_escaped_in_html_and_markdown(tmp_path):
    store = ResultStore(tmp_path)
    hostile = "<script>alert(1)</script>"
    files = [measured(store, hostile, "raw", "synthetic/segmentation", 1.0)]
    board = build_table(files, "s", SUITE)
    page = to_html([board])
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own sorting script
    assert hostile not in to_markdown(board)
    write_json_atomic(tmp_path / "out" / "s.json", board)
    assert hostile not in write_index(tmp_path / "out").read_text()


def test_builtin_suites_name_registered_tasks():
    from phreg_bench.registries import TASKS

    for entry in SUITES:
        for task in entry.resolve()["tasks"]:
            assert task in TASKS, f"suite {entry.name} names unknown task {task}"
