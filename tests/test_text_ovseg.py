"""Templates, synonym class files, per-name template averaging and the text-embedding cache."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fixtures_seg import OpenClipTextTower, tiny_clip

from phreg_bench.tasks.ovseg.text import (
    TextEmbeddingCache,
    cache_key,
    class_queries,
    encode_names,
    read_class_names,
    read_templates,
)
from phreg_bench.tasks.specs import class_file, spec_root


@pytest.fixture(scope="module")
def tower():
    return OpenClipTextTower(tiny_clip(), "tiny-clip-text(seed=0)")


def test_shipped_templates_and_class_files():
    templates = read_templates(spec_root() / "templates" / "imagenet_templates.txt")
    assert len(templates) == 80 and templates[0] == "a bad photo of a {c}."
    voc = read_class_names(class_file("voc21.txt"))
    assert len(voc) == 21 and len(voc[0]) == 26 and voc[0][:2] == ["sky", "wall"]
    assert voc[15][0] == "person" and len(voc[15]) == 7
    counts = {name: len(read_class_names(class_file(f"{name}.txt"))) for name in
              ("voc20", "context60", "context59", "coco_object", "coco_stuff", "city_scapes", "ade20k")}
    assert counts == {"voc20": 20, "context60": 60, "context59": 59, "coco_object": 81, "coco_stuff": 171,
                      "city_scapes": 19, "ade20k": 150}


def test_bad_files_are_errors(tmp_path):
    (tmp_path / "t.txt").write_text("a photo of a {c}.\nno placeholder\n")
    with pytest.raises(ValueError, match="no placeholder"):
        read_templates(tmp_path / "t.txt")
    (tmp_path / "c.txt").write_text("cat\n , \n")
    with pytest.raises(ValueError, match="line 2"):
        read_class_names(tmp_path / "c.txt")


@torch.no_grad()
def test_encoding_equals_the_per_class_reference_loop(tower):
    templates = ["a photo of a {c}.", "a bad photo of the {c}.", "itap of a {c}."]
    names = ["cat", "person in shirt", "television monitor", "cat"]  # a repeated name is encoded once
    ours = encode_names(tower.encode, names, templates, batch_size=4)
    # NACLIP / PH-Reg: per name, encode its templates, normalise each, average, re-normalise.
    expected = []
    for name in names:
        feats = tower.encode([t.replace("{c}", name) for t in templates])
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(0)
        expected.append(mean / mean.norm())
    torch.testing.assert_close(ours, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(names)))


def test_cache_miss_then_hit_and_key_sensitivity(tower, tmp_path):
    classes = [["sky", "wall"], ["cat"]]
    templates = ["a photo of a {c}.", "itap of a {c}."]
    calls = tower.calls
    first = class_queries(tower.encode, classes, templates, tower_identity=tower.identity, cache_dir=tmp_path)
    assert first.cache == "miss" and tower.calls > calls
    assert first.query_class.tolist() == [0, 0, 1] and first.names == ["sky", "wall", "cat"]
    calls = tower.calls
    second = class_queries(tower.encode, classes, templates, tower_identity=tower.identity, cache_dir=tmp_path)
    assert second.cache == "hit" and tower.calls == calls
    torch.testing.assert_close(first.embeddings, second.embeddings)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files
    key = cache_key(tower.identity, templates, classes)
    assert key != cache_key("other-tower", templates, classes)
    assert key != cache_key(tower.identity, templates[:1], classes)
    assert key != cache_key(tower.identity, templates, [["sky"], ["cat"]])
    uncached = class_queries(tower.encode, classes, templates)
    assert uncached.cache == "off"


def test_damaged_cache_file_is_a_miss_and_is_rewritten(tower, tmp_path):
    classes, templates = [["dog"], ["tree"]], ["a photo of a {c}."]
    key = cache_key(tower.identity, templates, classes)
    cache = TextEmbeddingCache(tmp_path)
    cache.path(key).write_bytes(b"garbage")
    out = class_queries(tower.encode, classes, templates, tower_identity=tower.identity, cache_dir=tmp_path)
    assert out.cache == "miss"
    assert cache.load(key, 2) is not None
    assert cache.load(key, 3) is None  # a file with the wrong number of queries is never reused


def test_embeddings_are_unit_norm_means_of_unit_vectors():
    def fake_encode(texts):
        return torch.stack([torch.tensor([float(len(t)), 1.0 + (t.count("a") % 2)]) for t in texts])

    out = encode_names(fake_encode, ["x"], ["{c}", "a {c}", "aa {c}"], batch_size=1)
    feats = F.normalize(fake_encode(["x", "a x", "aa x"]), dim=-1)
    torch.testing.assert_close(out[0], F.normalize(feats.mean(0), dim=0))
