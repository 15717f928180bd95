"""The feature cache: content addressing (weights, method config, resolution), hits, corruption, resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fixtures_probe import single_thread  # noqa: F401

from phreg_bench.backbones.builtin import build_tiny_vit
from phreg_bench.methods.base import DenseModel
from phreg_bench.probes import cache as cache_module
from phreg_bench.probes import features as feats
from phreg_bench.probes.cache import ArraySpec, FeatureCache
from phreg_bench.tasks.base import RunContext

pytestmark = pytest.mark.usefixtures("single_thread")

ARRAYS = {"patches": ArraySpec((64, 4, 4), "float16"), "labels": ArraySpec((32, 32), "uint8")}


@pytest.fixture
def ctx(tmp_path):
    return RunContext(cache_dir=tmp_path / "cache", batch_size=4)


def _images(n: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


class Producer:
    """Computes rows with the real model and counts how many rows it was asked for."""

    def __init__(self, model, ctx, images):
        self.model, self.ctx, self.images, self.calls = model, ctx, images, []

    def __call__(self, rows):
        self.calls.extend(int(r) for r in rows)
        patches, _ = feats.extract(self.model, self.images[rows], self.ctx)
        return {"patches": patches.numpy(), "labels": np.full((len(rows), 32, 32), 7, np.uint8)}


def _entry(cache, model, ctx, size=32, manifest="m1"):
    fields = feats.cache_fields(model, ctx, task="test", split="val", manifest=manifest,
                                geometry={"input_size": size})
    return cache.entry(fields, ARRAYS, 6)


def test_same_inputs_hit_and_give_the_same_bytes(ctx):
    model = DenseModel(build_tiny_vit(seed=0), "raw")
    images = _images(6)
    cache = FeatureCache(ctx.cache_dir)
    first = Producer(model, ctx, images)
    entry = _entry(cache, model, ctx)
    status = feats.fill(entry, first, 4, ctx, "fill")
    assert status["computed_rows"] == 6 and not status["hit"] and entry.complete
    saved = entry.read("patches", [5, 0, 3])

    again = _entry(FeatureCache(ctx.cache_dir), model, ctx)
    second = Producer(model, ctx, images)
    status = feats.fill(again, second, 4, ctx, "fill")
    assert status["hit"] and second.calls == [] and not again.created
    np.testing.assert_array_equal(again.read("patches", [5, 0, 3]), saved)
    direct, _ = feats.extract(model, images[[5, 0, 3]], ctx)
    np.testing.assert_array_equal(saved, direct.numpy().astype(np.float16))


def test_weights_method_config_and_resolution_change_the_key(ctx):
    cache = FeatureCache(ctx.cache_dir)
    base = DenseModel(build_tiny_vit(seed=0), "raw")
    keys = {
        "base": _entry(cache, base, ctx).key,
        "weights": _entry(cache, DenseModel(build_tiny_vit(seed=1), "raw"), ctx).key,
        "method": _entry(cache, DenseModel(build_tiny_vit(seed=0), "tta", {"views": 10}), ctx).key,
        "method config": _entry(cache, DenseModel(build_tiny_vit(seed=0), "tta", {"views": 4}), ctx).key,
        "resolution": _entry(cache, base, ctx, size=48).key,
        "precision": _entry(cache, DenseModel(build_tiny_vit(seed=0), "raw").set_precision("bf16"), ctx).key,
        "dataset manifest": _entry(cache, base, ctx, manifest="m2").key,
    }
    assert len(set(keys.values())) == len(keys), keys
    assert _entry(cache, DenseModel(build_tiny_vit(seed=0), "raw"), ctx).key == keys["base"]  # same inputs


def test_a_corrupted_row_is_detected_and_recomputed(ctx):
    model = DenseModel(build_tiny_vit(seed=0), "raw")
    images = _images(6)
    cache = FeatureCache(ctx.cache_dir)
    entry = _entry(cache, model, ctx)
    feats.fill(entry, Producer(model, ctx, images), 4, ctx, "fill")
    good = entry.read("patches", [2]).copy()
    path = entry.path / "patches.npy"
    raw = bytearray(path.read_bytes())
    row_bytes = 64 * 4 * 4 * 2
    offset = len(raw) - 6 * row_bytes + 2 * row_bytes + 17  # inside row 2 (after the .npy header)
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))

    reopened = _entry(FeatureCache(ctx.cache_dir), model, ctx)
    assert reopened.corrupted_rows == 1
    assert reopened.missing_rows().tolist() == [2]
    producer = Producer(model, ctx, images)
    status = feats.fill(reopened, producer, 4, ctx, "repair")
    assert producer.calls == [2] and status["corrupted_rows_recomputed"] == 1
    np.testing.assert_array_equal(reopened.read("patches", [2]), good)
    assert _entry(FeatureCache(ctx.cache_dir), model, ctx).corrupted_rows == 0


def test_a_broken_layout_wipes_the_entry(ctx):
    model = DenseModel(build_tiny_vit(seed=0), "raw")
    cache = FeatureCache(ctx.cache_dir)
    entry = _entry(cache, model, ctx)
    feats.fill(entry, Producer(model, ctx, _images(6)), 4, ctx, "fill")
    labels = entry.path / "labels.npy"
    labels.write_bytes(labels.read_bytes()[:-100])  # truncated file
    again = _entry(FeatureCache(ctx.cache_dir), model, ctx)
    assert again.created and again.open_error and len(again.missing_rows()) == 6


def test_rows_written_but_not_committed_are_recomputed(ctx, monkeypatch):
    monkeypatch.setattr(cache_module, "STATE_SAVE_INTERVAL_S", 1e9)
    model = DenseModel(build_tiny_vit(seed=0), "raw")
    images = _images(6)
    entry = _entry(FeatureCache(ctx.cache_dir), model, ctx)
    producer = Producer(model, ctx, images)
    entry.write([0, 1], producer(np.array([0, 1])))  # a "crash" before the state is saved
    resumed = _entry(FeatureCache(ctx.cache_dir), model, ctx)
    assert resumed.missing_rows().tolist() == list(range(6))
    entry.flush()  # once committed, the rows count
    assert _entry(FeatureCache(ctx.cache_dir), model, ctx).missing_rows().tolist() == [2, 3, 4, 5]


def test_reading_unwritten_rows_fails_and_temporary_cache_cleans_up(ctx):
    cache = FeatureCache(None)
    entry = cache.entry({"x": 1}, ARRAYS, 3)
    with pytest.raises(RuntimeError, match="never written"):
        entry.read("patches", [0])
    root = cache.root
    cache.close()
    assert not root.exists()


def test_open_cache_is_temporary_without_a_weights_hash(ctx):
    backbone = build_tiny_vit(seed=0)
    backbone.identity = dataclasses.replace(backbone.identity, weights_sha256=None)
    cache, kind = feats.open_cache(ctx, DenseModel(backbone, "raw"))
    assert not cache.persistent and "sha256" in kind
    cache.close()
    cache, kind = feats.open_cache(ctx, DenseModel(build_tiny_vit(seed=0), "raw"))
    assert cache.persistent and kind == "persistent"


def test_not_enough_disk_is_a_clear_error_before_any_work(ctx, monkeypatch):
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(cache_module.CacheSpaceError, match="GiB"):
        FeatureCache(ctx.cache_dir).entry({"x": 2}, ARRAYS, 100)
