"""Leaderboard rules: complete-only means, delta vs raw, exclusions with reasons, escaping."""

from __future__ import annotations

from pathlib import Path

import pytest

from phreg_bench.leaderboard import build_table, to_html, to_markdown, write_index
from phreg_bench.registries import SUITES
from phreg_bench.results.records import (
    BackboneRef,
    Citation,
    MethodRef,
    Metrics,
    Protocol,
    Provenance,
    ResultRecord,
    RunIdentity,
    TaskRef,
    Timings,
)
from phreg_bench.results.store import ResultStore, write_json_atomic
from phreg_bench.tasks.base import TaskOutcome

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
             protocol: str = "default", complete: bool = True, finished: str = "2026-01-01T00:00:00+00:00",
             overrides: dict | None = None, precision: str = "fp32", sha: str = "s", seed: int = 0,
             method_config: dict | None = None, extra: dict | None = None, spec_hash: str | None = None) -> Path:
    """A measured record as the runner writes it: the task's real spec hash and resolved settings."""
    from phreg_bench.registries import TASK_FAMILIES, TASKS
    from phreg_bench.tasks.base import RunContext

    spec = TASKS.get(task)
    family = TASK_FAMILIES.get(spec.family)()
    preset = spec.default_protocol if protocol == "default" else protocol
    settings = {**family.resolve_settings(spec, preset if preset in spec.protocols else None, RunContext(),
                                          overrides), "name": protocol}
    identity = RunIdentity(
        task=TaskRef(task, "synthetic", version, spec_hash or spec.spec_hash()),
        backbone=BackboneRef({"name": backbone, "architecture": "vit", "weights_id": "w", "weights_sha256": sha,
                              "extra": extra or {}}),
        method=MethodRef(method, method_config or {}), protocol=Protocol(protocol, settings, None),
        seed=seed, limit=None if complete else 2, precision=precision,
    )
    record = ResultRecord.measured(
        identity, outcome=TaskOutcome("mIoU", {"mIoU": value}, num_samples=4 if complete else 2),
        higher_is_better=True, expected_samples=4, timings=Timings(None),
        provenance=Provenance({}, {}, {}, [], started_at=finished, finished_at=finished))
    return store.write(record)


TASK_A, TASK_B = SUITE["tasks"]
NEWER = "2026-03-01T00:00:00+00:00"


def _pair(store, backbone, method, a, b, **kwargs) -> list[Path]:
    return [measured(store, backbone, method, TASK_A, a, **kwargs), measured(store, backbone, method, TASK_B, b,
                                                                            **kwargs)]


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


def test_newer_run_of_the_same_config_supersedes_older(tmp_path):
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
        record = ResultRecord.reported(task=TaskRef(task, "synthetic", "1", None), backbone="vit", method="raw",
                                       protocol="default", metrics=Metrics("mIoU", True, {"mIoU": value}),
                                       citation=Citation("arXiv:0000", "1"))
        path = tmp_path / "reported" / f"{task.replace('/', '_')}.json"
        write_json_atomic(path, record.to_json())
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


def test_markdown_is_plain_text_without_html_entities(tmp_path):
    store = ResultStore(tmp_path)
    files = [measured(store, "o'neil & co|x", "raw", "synthetic/segmentation", 1.0)]
    board = build_table(files, "s", SUITE)
    board["excluded"] = [{"file": "ovseg__voc__paper__ab.json", "reason": "mmseg's <pipeline> &\nmore"}]
    text = to_markdown(board)
    assert "| o'neil & co\\|x |" in text  # the pipe escaped for the table, nothing else
    assert "- `ovseg__voc__paper__ab.json`: mmseg's \\<pipeline\\> & more" in text
    assert "&#x27;" not in text and "&amp;" not in text and "&lt;" not in text and "<code>" not in text


def test_builtin_suites_name_registered_tasks():
    from phreg_bench.registries import TASKS

    for entry in SUITES:
        for task in entry.resolve()["tasks"]:
            assert task in TASKS, f"suite {entry.name} names unknown task {task}"


def test_other_settings_are_separate_rows_and_never_supersede(tmp_path):
    """Issue 10 §2.4: a newer run with other protocol settings, weights, precision or seed under the same
    backbone name is its own row (the difference named), never a replacement of the canonical one."""
    store = ResultStore(tmp_path)
    files = [*_pair(store, "vit", "raw", 40.0, 20.0), *_pair(store, "vit", "phreg", 44.0, 24.0)]
    files += _pair(store, "vit", "phreg", 50.0, 30.0, finished=NEWER, overrides={"num_val": 3})
    files += _pair(store, "vit", "raw", 10.0, 10.0, finished=NEWER, sha="t")
    files += _pair(store, "vit", "phreg", 60.0, 40.0, finished=NEWER, precision="bf16")
    files += _pair(store, "vit", "raw", 30.0, 10.0, finished=NEWER, precision="bf16")
    files += _pair(store, "vit", "phreg", 41.0, 21.0, finished=NEWER, seed=1)
    board = build_table(files, "s", SUITE)
    assert not [item for item in board["excluded"] if "superseded" in item["reason"]]
    rows = {(r["method"], r["variant"].replace(", weights s", "")): r for r in board["rows"]}
    assert set(rows) == {("raw", "weights s"), ("phreg", "weights s"), ("phreg", "num_val=3"), ("raw", "weights t"),
                         ("phreg", "bf16"), ("raw", "bf16"), ("phreg", "seed 1")}
    canonical = rows[("phreg", "weights s")]
    assert canonical["values"] == {TASK_A: 44.0, TASK_B: 24.0}
    assert canonical["delta_vs_raw"] == {TASK_A: 4.0, TASK_B: 4.0} and canonical["mean_delta_vs_raw"] == 4.0
    assert canonical["baseline"]["variant"] == "weights s"  # the raw row with the same weights
    assert rows[("phreg", "bf16")]["delta_vs_raw"] == {TASK_A: 30.0, TASK_B: 30.0}  # against raw bf16 only
    for variant in ("num_val=3", "seed 1"):  # no raw row with these settings: no delta rather than a wrong one
        assert rows[("phreg", variant)]["delta_vs_raw"] == {} and rows[("phreg", variant)]["baseline"] is None
    assert rows[("phreg", "bf16")]["precision"] == "bf16" and canonical["precision"] == "fp32"
    assert "phreg (num_val=3, weights s)" in to_markdown(board)


def test_a_rerun_of_the_same_identity_is_superseded(tmp_path):
    store = ResultStore(tmp_path)
    old = measured(store, "vit", "raw", TASK_A, 1.0, overrides={"num_val": 3})
    new = measured(ResultStore(tmp_path / "again"), "vit", "raw", TASK_A, 2.0, overrides={"num_val": 3},
                   finished=NEWER)
    board = build_table([new, old], "s", SUITE)
    assert [row["values"] for row in board["rows"]] == [{TASK_A: 2.0}]
    assert board["excluded"] == [{"file": str(old), "reason": f"superseded by newer run {new} (same config hash)"}]


def test_phreg_prefixed_backbone_gets_its_delta_against_the_base_raw_row(tmp_path):
    """Issue 10 §2.5: ``phreg:<base>`` runs the base's weights; its delta is against ``<base>`` + raw."""
    store = ResultStore(tmp_path)
    files = [*_pair(store, "openai-clip-vit-b16", "raw", 40.0, 20.0),
             *_pair(store, "phreg:openai-clip-vit-b16", "phreg", 45.0, 23.0,
                    extra={"phreg_base": "openai-clip-vit-b16"}, method_config={"adapter_sha256": "a"}),
             *_pair(store, "phreg:openai-clip-vit-b16", "phreg", 47.0, 27.0, sha="other",
                    extra={"phreg_base": "openai-clip-vit-b16"}, method_config={"adapter_sha256": "b"}),
             *_pair(store, "openai-clip-vit-b16", "phreg", 46.0, 22.0, method_config={"adapter_sha256": "a"})]
    board = build_table(files, "s", SUITE)
    rows = {(r["backbone"], r["values"][TASK_A]): r for r in board["rows"]}
    prefixed = rows[("phreg:openai-clip-vit-b16", 45.0)]
    assert prefixed["delta_vs_raw"] == {TASK_A: 5.0, TASK_B: 3.0} and prefixed["mean_delta_vs_raw"] == 4.0
    assert prefixed["baseline"]["backbone"] == "openai-clip-vit-b16"
    adapter_run = rows[("openai-clip-vit-b16", 46.0)]  # `-b openai-clip-vit-b16 --adapter`
    assert adapter_run["delta_vs_raw"] == {TASK_A: 6.0, TASK_B: 2.0}
    other = rows[("phreg:openai-clip-vit-b16", 47.0)]
    assert other["delta_vs_raw"] == {} and other["baseline"] is None  # other weights: no raw row to compare
    assert other["weights"] == "other" and "weights other" in other["variant"]


def test_a_result_of_an_older_task_spec_is_excluded_with_the_reason(tmp_path):
    # the spec file has changed since the run: the file records the spec hash of that time
    path = measured(ResultStore(tmp_path), "vit", "raw", TASK_A, 1.0, spec_hash="0" * 64)
    board = build_table([path], "s", SUITE)
    assert board["rows"] == [] and "task spec changed" in board["excluded"][0]["reason"]
