"""Schema v1: round trip, strict JSON, atomic writes, config-hash stability."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest
import torch

from phreg_bench.results.hashing import config_hash
from phreg_bench.results.records import Citation, Metrics, ResultRecord, TaskRef
from phreg_bench.results.schema import ResultError, dumps_strict, loads_strict
from phreg_bench.results.store import ResultStore, read_result, result_files, write_json_atomic
from phreg_bench.runner import RunRequest, run
from phreg_bench.tasks.base import RunContext

SMALL = {"image_size": 32, "num_train": 4, "num_val": 2}


def small_run(tmp_path: Path, **ctx_kwargs) -> Path:
    request = RunRequest(backbone="tiny-vit", tasks=["synthetic/segmentation"], results_dir=tmp_path,
                         protocol_overrides=ctx_kwargs.pop("overrides", SMALL))
    runs = run(request, RunContext(**ctx_kwargs), log=lambda message: None)
    assert runs[0].status in ("done", "skipped"), runs[0].error
    return runs[0].path


def test_measured_record_round_trips_and_validates(tmp_path):
    path = small_run(tmp_path)
    record = read_result(path)
    assert ResultRecord.from_json(loads_strict(dumps_strict(record.to_json())), migrate=False) == record
    assert loads_strict(path.read_text()) == record.to_json()  # the file is exactly the record
    assert record.kind == "measured" and record.status.complete
    assert record.identity.protocol.settings["image_size"] == 32
    assert record.provenance.package_versions["torch"] == metadata.version("torch")
    assert set(record.to_json()["provenance"]) >= {"git", "hardware", "command", "seed", "started_at",
                                                   "finished_at"}
    assert 0 <= record.metrics.values["mIoU"] <= 100
    assert read_result(str(path)) == record  # a plain string path reads the same


def test_nan_is_rejected_on_write_and_on_read(tmp_path):
    record = ResultRecord.reported(task=TaskRef("ovseg/voc21", "ovseg", "1", None), backbone="b", method="raw",
                                   protocol="phreg", metrics=Metrics("mIoU", True, {"mIoU": float("nan")}),
                                   citation=Citation("x")).to_json()
    with pytest.raises(ResultError):
        dumps_strict(record)
    with pytest.raises(ResultError):
        ResultRecord.from_json(record)
    text = json.dumps(record)  # Python writes NaN by default: the reader must refuse it
    with pytest.raises(ResultError, match="NaN"):
        loads_strict(text)


def test_validation_names_the_problem():
    with pytest.raises(ResultError, match="schema_version"):
        ResultRecord.from_json({"schema_version": 99})
    with pytest.raises(ResultError, match="citation"):
        ResultRecord.from_json({"schema_version": 1, "kind": "reported", "task": {}, "backbone": {}, "method": {},
                  "protocol": {}, "metrics": {}, "status": {}, "config_hash": "x"})


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_stale_temp_files_are_removed(tmp_path):
    stale = tmp_path / "b" / ".x.json.abc.tmp"
    stale.parent.mkdir()
    stale.write_text("{half")
    os.utime(stale, (0, 0))
    assert ResultStore(tmp_path).remove_stale_temp_files() == 1 and not stale.exists()


def test_config_hash_ignores_device_workers_and_batch_size_but_not_protocol(tmp_path):
    first = small_run(tmp_path / "a", batch_size=2, num_workers=0)
    second = small_run(tmp_path / "b", batch_size=4, num_workers=3, device=torch.device("cpu"))
    assert first.name == second.name
    assert read_result(first).identity.config_hash == read_result(second).identity.config_hash
    third = small_run(tmp_path / "c", overrides={**SMALL, "num_val": 3})
    assert third.name != first.name


def test_config_hash_depends_on_seed_method_config_and_precision():
    base = dict(task={"name": "t/x", "version": "1", "spec_hash": "s"},
                backbone={"name": "b", "architecture": "a", "weights_sha256": "w"},
                method={"name": "m", "config": {"k": 1}}, protocol={"crop": 336}, limit=None, precision="fp32")
    assert config_hash(seed=0, **base) != config_hash(seed=1, **base)
    changed = {**base, "method": {"name": "m", "config": {"k": 2}}}
    assert config_hash(seed=0, **base) != config_hash(seed=0, **changed)
    hashes = {config_hash(seed=0, **{**base, "precision": p}) for p in ("fp32", "bf16", "fp16")}
    assert len(hashes) == 3


def test_a_bf16_run_is_not_skipped_as_done_after_an_fp32_run(tmp_path):
    """Issue 10 §2.1: precision is part of the result identity (file name, config hash, record)."""
    logs: list[str] = []
    request = RunRequest(backbone="tiny-vit", tasks=["synthetic/segmentation"], results_dir=tmp_path,
                         protocol_overrides=SMALL)
    first = run(request, RunContext(precision="fp32"), log=logs.append)[0]
    second = run(request, RunContext(precision="bf16"), log=logs.append)[0]
    assert (first.status, second.status) == ("done", "done"), logs
    assert first.path != second.path and not any("already done" in line for line in logs)
    fp32, bf16 = read_result(first.path), read_result(second.path)
    assert fp32.identity.config_hash != bf16.identity.config_hash
    assert (fp32.identity.precision, bf16.identity.precision) == ("fp32", "bf16")  # what ran (CPU autocast has bf16)
    again = run(request, RunContext(precision="bf16"), log=logs.append)[0]
    assert again.status == "skipped" and again.path == second.path


def test_a_failed_task_writes_an_error_record_that_a_rerun_replaces(tmp_path, monkeypatch):
    """A failed task leaves an error record (no metrics, the error, timings so far, provenance); `only-missing`
    treats it as not done, and the rerun's result replaces it in the same file."""
    from phreg_bench.synthetic.family import SyntheticSegmentation

    def broken(self, model, spec, settings, ctx):
        raise RuntimeError("out of cheese")

    logs: list[str] = []
    request = RunRequest(backbone="tiny-vit", tasks=["synthetic/segmentation"], results_dir=tmp_path,
                         protocol_overrides=SMALL)
    with monkeypatch.context() as patch:
        patch.setattr(SyntheticSegmentation, "run", broken)
        failed = run(request, RunContext(), log=logs.append)[0]
    assert failed.status == "failed" and failed.error == "RuntimeError: out of cheese"
    (path,) = result_files(tmp_path)
    record = read_result(path)
    assert record.failed and record.metrics is None and not record.status.complete
    assert (record.status.error.type, record.status.error.message) == ("RuntimeError", "out of cheese")
    assert record.timings.total_s is not None and record.provenance.finished_at and record.record_sha256
    data = loads_strict(path.read_text())
    assert "metrics" not in data and data["status"]["error"] == {"type": "RuntimeError", "message": "out of cheese"}
    assert not ResultStore(tmp_path).is_done(path)
    again = run(request, RunContext(), log=logs.append)[0]
    assert again.status == "done" and again.path == path
    assert not read_result(path).failed and read_result(path).metrics.values["mIoU"] >= 0


def test_error_records_are_listed_by_results_show_and_kept_off_the_leaderboard(tmp_path, monkeypatch, capsys):
    from phreg_bench.cli import main
    from phreg_bench.leaderboard import build_table
    from phreg_bench.synthetic.family import SyntheticSegmentation

    def broken(self, model, spec, settings, ctx):
        raise ValueError("bad scene")

    monkeypatch.setattr(SyntheticSegmentation, "run", broken)
    request = RunRequest(backbone="tiny-vit", tasks=["synthetic/segmentation"], results_dir=tmp_path,
                         protocol_overrides=SMALL)
    run(request, RunContext(), log=lambda message: None)
    (path,) = result_files(tmp_path)
    assert main(["results", "show", str(tmp_path)]) == 0
    assert "error: ValueError: bad scene" in capsys.readouterr().out
    board = build_table([path], "synthetic", {"tasks": ["synthetic/segmentation"]})
    assert board["rows"] == []
    assert board["excluded"] == [{"file": str(path), "reason": "failed run: ValueError: bad scene"}]


def test_results_show_keeps_a_long_error_message_out_of_the_table(tmp_path, monkeypatch, capsys):
    from phreg_bench.cli import main
    from phreg_bench.synthetic.family import SyntheticSegmentation

    message = "the scene generator gave up " + "because " * 30

    def broken(self, model, spec, settings, ctx):
        raise ValueError(message)

    small_run(tmp_path)  # one finished run beside the failed one
    monkeypatch.setattr(SyntheticSegmentation, "run", broken)
    request = RunRequest(backbone="tiny-vit", tasks=["synthetic/segmentation"], results_dir=tmp_path,
                         protocol_overrides={**SMALL, "num_val": 3})
    run(request, RunContext(), log=lambda message: None)
    assert main(["results", "show", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if "synthetic/segmentation" in line]
    assert len(rows) == 2 and any(" error " in row for row in rows)
    assert all("gave up" not in row and len(row) < 160 for row in rows)  # no row padded to the message
    (failed,) = [path for path in result_files(tmp_path) if read_result(path).failed]
    assert f"{failed}: error: ValueError: {message}" in lines  # the whole message, after the table


def test_metric_values_keep_their_decimals():
    from phreg_bench.results.records import format_metric

    assert [format_metric(v) for v in (61.0, 1.233, 0.5, 61.237)] == ["61.00", "1.233", "0.5000", "61.24"]


def test_files_of_earlier_versions_are_migrated_on_read(tmp_path):
    """Before the family declared its row variant the record had no ``protocol.variant``; before precision
    was recorded there was no ``precision`` (and it was not hashed): both still load, unchanged in hash."""
    path = small_run(tmp_path)
    data = loads_strict(path.read_text())
    old = {key: value for key, value in data.items() if key not in ("record_sha256", "precision")}
    old["protocol"] = {key: value for key, value in old["protocol"].items() if key != "variant"}
    old["config_hash"] = ResultRecord.from_json(old, strict=False).identity.config_hash  # hashed without precision
    record = ResultRecord.from_json(old)
    assert record.identity.protocol.variant is None and record.identity.precision is None
    assert record.precision_ran == "fp32"
    with pytest.raises(ResultError, match="protocol.variant"):
        ResultRecord.from_json(old, migrate=False)
    probe = dict(old, protocol={"name": "paper", "settings": {"name": "paper", "budget": "quick",
                                                              "train_features": "full"}})
    assert ResultRecord.from_json(probe, strict=False).identity.protocol.variant == "quick/full"


def test_strict_reading_refuses_unknown_fields(tmp_path):
    data = loads_strict(small_run(tmp_path).read_text())
    data.pop("record_sha256")
    with pytest.raises(ResultError, match="unknown key"):
        ResultRecord.from_json({**data, "score": 1})
    assert ResultRecord.from_json({**data, "score": 1}, strict=False).metrics.main == "mIoU"
