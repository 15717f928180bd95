"""The feature cache under concurrent writers (the ranks of a torchrun group, or two runs sharing a cache):
one process creates an entry, every writer's rows survive, bytes are exact, nothing is lost to a race."""

from __future__ import annotations

import multiprocessing

import numpy as np

from phreg_bench.probes import cache as cache_module
from phreg_bench.probes.cache import ArraySpec, FeatureCache

ARRAYS = {"patches": ArraySpec((8, 3, 3), "float16"), "labels": ArraySpec((5, 7), "uint8")}  # odd row sizes
ROWS = 60
FIELDS = {"test": "concurrent writers"}


def row_values(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Deterministic content of each row (so every writer of a row writes the same bytes)."""
    rows = np.asarray(rows)
    patches = (rows[:, None, None, None] + np.arange(72).reshape(1, 8, 3, 3) / 100).astype(np.float16)
    labels = ((rows[:, None, None] * 7 + np.arange(35).reshape(1, 5, 7)) % 251).astype(np.uint8)
    return {"patches": patches, "labels": labels}


def writer(root: str, rows: list[int], start, done) -> None:
    start.wait()  # every writer opens the entry at the same moment (creation race)
    entry = FeatureCache(root).entry(FIELDS, ARRAYS, ROWS)
    for i in range(0, len(rows), 3):  # small chunks, a state save after each (interleaved saves)
        chunk = np.asarray(rows[i:i + 3])
        entry.write(chunk, row_values(chunk))
        entry._save_state()
    entry.flush()
    done.wait()
    entry.refresh()  # after the barrier: every writer sees every row
    assert entry.complete, entry.missing_rows()


def test_concurrent_writers_lose_no_row(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "STATE_SAVE_INTERVAL_S", 0.0)
    context = multiprocessing.get_context("fork")
    writers = 4
    start, done = context.Barrier(writers), context.Barrier(writers)
    # disjoint blocks, plus rows 0..9 written by everyone (the same bytes, as two ranks recomputing a row)
    plans = [sorted(set(range(w, ROWS, writers)) | set(range(10))) for w in range(writers)]
    processes = [context.Process(target=writer, args=(str(tmp_path), plan, start, done)) for plan in plans]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [p.exitcode for p in processes] == [0] * writers

    entry = FeatureCache(tmp_path).entry(FIELDS, ARRAYS, ROWS)
    assert not entry.created and entry.corrupted_rows == 0 and entry.complete  # every row, CRC-verified
    everything = np.arange(ROWS)
    expected = row_values(everything)
    for name in ARRAYS:
        np.testing.assert_array_equal(entry.read(name, everything), expected[name])
    assert len(list((tmp_path / "features").glob("*/*/meta.json"))) == 1  # created once


def test_a_row_another_writer_corrupted_is_not_adopted(tmp_path):
    first = FeatureCache(tmp_path).entry(FIELDS, ARRAYS, ROWS)
    second = FeatureCache(tmp_path).entry(FIELDS, ARRAYS, ROWS)
    first.write([3, 4], row_values(np.array([3, 4])))
    first.flush()
    with open(first.path / "labels.npy", "r+b") as stream:  # row 4's bytes change after its CRC was recorded
        stream.seek(first._maps["labels"].offset + 4 * ARRAYS["labels"].row_bytes)
        stream.write(b"\xff")
    assert second.refresh() == 1
    assert second.missing_rows().tolist() == [r for r in range(ROWS) if r != 3]
