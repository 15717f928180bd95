"""Schema v1: round trip, strict JSON, atomic writes, config-hash stability."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest
import torch

from phreg_bench.results.hashing import config_hash
from phreg_bench.results.records import reported_record
from phreg_bench.results.schema import ResultError, dumps_strict, loads_strict, validate
from phreg_bench.results.store import ResultStore, read_result, write_json_atomic
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
    assert loads_strict(dumps_strict(record)) == record
    assert record["kind"] == "measured" and record["status"]["complete"]
    assert record["protocol"]["settings"]["image_size"] == 32
    assert record["provenance"]["package_versions"]["torch"] == metadata.version("torch")
    assert set(record["provenance"]) >= {"git", "hardware", "command", "seed", "started_at", "finished_at"}
    assert 0 <= record["metrics"]["values"]["mIoU"] <= 100


def test_nan_is_rejected_on_write_and_on_read(tmp_path):
    record = reported_record(task={"name": "ovseg/voc21", "family": "ovseg", "version": "1"},
                             backbone="b", method="raw", protocol="phreg", main_metric="mIoU",
                             higher_is_better=True, values={"mIoU": 1.0}, citation={"source": "x"})
    record["metrics"]["values"]["mIoU"] = float("nan")
    with pytest.raises(ResultError):
        dumps_strict(record)
    with pytest.raises(ResultError):
        validate(record)
    text = json.dumps(record)  # Python writes NaN by default: the reader must refuse it
    with pytest.raises(ResultError, match="NaN"):
        loads_strict(text)


def test_validation_names_the_problem():
    with pytest.raises(ResultError, match="schema_version"):
        validate({"schema_version": 99})
    with pytest.raises(ResultError, match="citation"):
        validate({"schema_version": 1, "kind": "reported", "task": {}, "backbone": {}, "method": {},
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
    assert read_result(first)["config_hash"] == read_result(second)["config_hash"]
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
    assert fp32["config_hash"] != bf16["config_hash"]
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")  # what ran (CPU autocast has bf16)
    again = run(request, RunContext(precision="bf16"), log=logs.append)[0]
    assert again.status == "skipped" and again.path == second.path
