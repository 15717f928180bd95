"""Fuzzing the readers of every file the project reads back.

A malformed file gives the project's own one-line error (a ``PhregError``) naming the file, never a bare
KeyError / TypeError / struct error; caches are fail-closed (a damaged entry is a miss and is recomputed).
Each property runs a fixed (derandomised) set of examples so CI is stable.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_core_fixtures import one_thread, tiny_timm  # noqa: F401

from phreg_core.errors import PhregError

# $PHREG_FUZZ_EXAMPLES runs more examples locally (e.g. 1000); CI keeps 40.
FUZZ = settings(max_examples=int(os.environ.get("PHREG_FUZZ_EXAMPLES", "40")), deadline=None, derandomize=True,
                database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def paths_of(value, prefix=()):
    """Every key path into a JSON value (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_of(item, (*prefix, index))


FIELD_NAMES = ["citation", "provenance", "timings", "status", "metrics", "values", "main", "config", "settings",
               "base", "student", "record_sha256", "config_hash", "version", "format", "limit", "seed"]


@st.composite
def mutated(draw, valid: dict):
    """``valid`` with one value (at any depth) replaced by arbitrary JSON, removed, or a field added."""
    record = copy.deepcopy(valid)
    path = draw(st.sampled_from(sorted((p for p in paths_of(record) if p), key=repr)))
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if isinstance(parent, dict) and action == "remove":
        del parent[path[-1]]
    elif isinstance(parent, dict) and action == "add":
        parent[draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=8))] = draw(JSON)
    else:
        parent[path[-1]] = draw(JSON)
    return record


def bytes_of(valid: bytes) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, truncations of ``valid`` and ``valid`` with a few bytes changed."""
    truncated = st.integers(0, max(0, len(valid) - 1)).map(lambda n: valid[:n])

    @st.composite
    def flipped(draw):
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)

    return st.binary(max_size=200) | truncated | flipped()


def assert_own_error(error: BaseException, *names: str) -> None:
    assert isinstance(error, PhregError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert any(name in message for name in names), message
    assert "\n" not in message.strip(), message


@pytest.fixture(scope="module")
def scratch():
    folder = Path(tempfile.mkdtemp(prefix="phreg-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# -- result files ------------------------------------------------------------------------------------------
def valid_result() -> dict:
    from phreg_bench.results.records import (
        BackboneRef,
        MethodRef,
        Protocol,
        Provenance,
        ResultRecord,
        RunIdentity,
        TaskRef,
        Timings,
    )
    from phreg_bench.results.store import ResultStore, read_result
    from phreg_bench.tasks.base import TaskOutcome

    identity = RunIdentity(TaskRef("synthetic/segmentation", "synthetic", "1", "h"),
                           BackboneRef({"name": "tiny-vit", "weights_id": "w", "weights_sha256": "s"}),
                           MethodRef("raw", {}), Protocol("default", {}, None), seed=0, limit=None, precision="fp32")
    record = ResultRecord.measured(identity, outcome=TaskOutcome("mIoU", {"mIoU": 50.0}, 2), higher_is_better=True,
                                   expected_samples=None, timings=Timings(1.0),
                                   provenance=Provenance({}, {}, {}, [], "t0", "t1"))
    folder = Path(tempfile.mkdtemp())
    try:
        return read_result(ResultStore(folder).write(record)).to_json()
    finally:
        shutil.rmtree(folder)


VALID_RESULT = valid_result()


def check_result(path: Path) -> None:
    from phreg_bench.results.store import read_result

    try:
        read_result(path)
    except Exception as error:  # noqa: BLE001 - the property is about which exceptions escape
        assert_own_error(error, path.name)


@FUZZ
@given(data=bytes_of(json.dumps(VALID_RESULT).encode()))
def test_result_files_from_bytes(scratch, data):
    path = scratch / "linseg__voc21__paper__0123456789ab.json"
    path.write_bytes(data)
    check_result(path)


@FUZZ
@given(record=mutated(VALID_RESULT) | JSON)
def test_result_files_with_any_field_changed(scratch, record):
    path = scratch / "linseg__voc21__paper__0123456789ab.json"
    path.write_text(json.dumps(record))
    check_result(path)


# -- adapters ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter(scratch):
    from phreg_core.adapter_io import save_adapter
    from phreg_core.student import Student

    torch.manual_seed(0)
    base = tiny_timm()
    tensors, sidecar = save_adapter(Student(base, 2), scratch / "adapter" / "adapter.safetensors",
                                    base_name="tiny", base_weights_sha256="0" * 64)
    return base, tensors.read_bytes(), json.loads(sidecar.read_text())


def write_adapter(folder: Path, tensors: bytes, sidecar: dict | bytes, fix_sha: bool = True) -> Path:
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter.safetensors").write_bytes(tensors)
    if isinstance(sidecar, dict) and fix_sha:
        sidecar = {**sidecar, "tensors_sha256": hashlib.sha256(tensors).hexdigest()}
    (folder / "adapter.json").write_bytes(sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode())
    return folder


def check_adapter(base, folder: Path) -> None:
    from phreg_core.adapter_io import load_adapter

    try:
        load_adapter(base, folder, weights_sha256="0" * 64)
    except Exception as error:  # noqa: BLE001
        assert_own_error(error, "adapter.json", "adapter.safetensors")


@FUZZ
@given(data=st.data())
def test_adapter_sidecars_with_any_field_changed(scratch, adapter, data):
    base, tensors, sidecar = adapter
    changed = data.draw(mutated(sidecar) | JSON | bytes_of(json.dumps(sidecar).encode()))
    check_adapter(base, write_adapter(scratch / "fuzzed-sidecar", tensors, changed))


@FUZZ
@given(data=st.data())
def test_adapter_tensor_files_from_bytes(scratch, adapter, data):
    base, tensors, sidecar = adapter
    check_adapter(base, write_adapter(scratch / "fuzzed-tensors", data.draw(bytes_of(tensors)), sidecar))


# -- the training log --------------------------------------------------------------------------------------
LOG = b"".join(json.dumps({"step": i, "epoch": 0, "loss": 0.5 / i}).encode() + b"\n" for i in range(1, 4))


@FUZZ
@given(data=bytes_of(LOG))
def test_training_logs_from_bytes(scratch, data):
    from phreg_core.checkpoint import read_log

    path = scratch / "log.jsonl"
    path.write_bytes(data)
    try:
        records, torn = read_log(path)
    except Exception as error:  # noqa: BLE001
        assert_own_error(error, "log.jsonl")
    else:
        assert all(type(record["step"]) is int for record, _ in records) and b"\n" not in torn


# -- label PNGs --------------------------------------------------------------------------------------------
def png(mode: str) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert(mode).save(stream, format="PNG")
    return stream.getvalue()


@FUZZ
@given(data=bytes_of(png("L")) | bytes_of(png("P")))
def test_label_pngs_from_bytes(scratch, data):
    from phreg_bench.datasets.base import read_label

    path = scratch / "label.png"
    path.write_bytes(data)
    try:
        label = read_label(path)
    except Exception as error:  # noqa: BLE001
        assert_own_error(error, "label.png")
    else:
        assert label.dtype == np.int64 and label.ndim == 2


# -- split lists -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voc(scratch):
    from fixtures_seg import make_voc

    make_voc(scratch / "data")
    return scratch / "data"


@FUZZ
@given(data=bytes_of(b"2007_000033\n2007_000042\n2007_000061\n")
       | st.lists(st.text(max_size=20), max_size=4).map(lambda ids: "\n".join(ids).encode()))
def test_split_lists_from_bytes(voc, data):
    from phreg_bench.datasets.pascal import VOC21

    split = voc / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    original = split.read_bytes()
    split.write_bytes(data)
    try:
        reader = VOC21(voc, split="val")
        for index in range(len(reader)):
            reader[index]
    except Exception as error:  # noqa: BLE001
        assert_own_error(error, "val.txt", "VOC2012", "voc")
    finally:
        split.write_bytes(original)


# -- caches: fail-closed -----------------------------------------------------------------------------------
@FUZZ
@given(which=st.sampled_from(["meta.json", "state.npy", "patches.npy"]), data=st.data())
def test_feature_cache_entries_from_bytes_are_recomputed(scratch, which, data):
    from phreg_bench.probes.cache import ArraySpec, FeatureCache

    arrays = {"patches": ArraySpec((2, 3), "float16")}
    cache = FeatureCache(scratch / "features")
    entry = cache.entry({"task": "fuzz"}, arrays, 4)
    try:
        entry.write([0, 1, 2, 3], {"patches": np.ones((4, 2, 3), np.float16)})
        entry.flush()
        target = entry.path / which
        target.write_bytes(data.draw(bytes_of(target.read_bytes())))
        try:
            again = cache.entry({"task": "fuzz"}, arrays, 4)
        except Exception as error:  # noqa: BLE001
            assert_own_error(error, str(entry.path))
        else:
            rows = [r for r in range(4) if r not in set(again.missing_rows().tolist())]
            if rows:  # whatever it still trusts must be exactly what was written
                assert (again.read("patches", rows) == 1).all()
    finally:
        shutil.rmtree(entry.path, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_target_cache_files_from_bytes_are_misses(scratch, data):
    from phreg_core.target_cache import TargetCache

    cache = TargetCache(scratch / "targets", {"teacher": "fuzz"})
    cache.put("k" * 64, torch.ones(2, 3, 3))
    path = cache.path("k" * 64)
    path.write_bytes(data.draw(bytes_of(path.read_bytes())))
    loaded = cache.load("k" * 64)
    assert loaded is None or isinstance(loaded, torch.Tensor)


@FUZZ
@given(data=st.data())
def test_text_cache_files_from_bytes_are_misses(scratch, data):
    from phreg_bench.tasks.ovseg.text import TextEmbeddingCache

    cache = TextEmbeddingCache(scratch / "text")
    cache.save("k" * 64, torch.nn.functional.normalize(torch.ones(3, 4), dim=-1), {"tower": "fuzz"})
    path = cache.path("k" * 64)
    path.write_bytes(data.draw(bytes_of(path.read_bytes())))
    loaded = cache.load("k" * 64, 3)
    assert loaded is None or loaded.shape == (3, 4)
