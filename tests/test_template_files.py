"""Template files in CLIP_benchmark's formats (``templates=FILE``): text lines, a JSON list of ``{c}``
templates, a JSON object of class name → prompts; anything else refused naming the file."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from fixtures_seg import OpenClipTextTower, make_voc, tiny_clip, tiny_clip_backbone

from phreg_bench.registries import METHODS, TASK_FAMILIES, TASKS
from phreg_bench.tasks.base import RunContext
from phreg_bench.tasks.ovseg.text import (
    TemplateFileError,
    cache_key,
    class_queries,
    encode_names,
    read_class_names,
    read_templates,
)
from phreg_bench.tasks.specs import class_file

TEMPLATES = ["a photo of a {c}.", "a bad photo of the {c}.", "itap of a {c}."]
CUPL = {"cat": ["a small furry cat curled on a sofa.", "a cat with pointed ears."],
        "dog": ["a dog fetching a stick.", "a loyal dog on a leash.", "a dog's wet nose."],
        "person in shirt": ["a person wearing a white shirt."]}


@pytest.fixture(scope="module")
def tower():
    return OpenClipTextTower(tiny_clip(), "tiny-clip-text(seed=0)")


def test_json_list_equals_the_same_templates_as_text_lines(tmp_path, tower):
    (tmp_path / "t.json").write_text(json.dumps(TEMPLATES))
    (tmp_path / "t.txt").write_text("\n".join(TEMPLATES) + "\n")
    # Before: the JSON file was one "template" line, '["a photo of a {c}.", ...]', used as a literal prompt.
    assert read_templates(tmp_path / "t.json") == TEMPLATES == read_templates(tmp_path / "t.txt")


@torch.no_grad()
def test_class_specific_prompts_equal_clip_benchmarks_classifier(tmp_path, tower):
    (tmp_path / "cupl.json").write_text(json.dumps(CUPL))
    prompts = read_templates(tmp_path / "cupl.json")
    assert prompts == CUPL
    classes = [["cat", "person in shirt"], ["dog"]]
    queries = class_queries(tower.encode, classes, prompts)
    # LAION-AI/CLIP_benchmark metrics/zeroshot_classification.py zero_shot_classifier, dict templates:
    # texts = templates[classname]; F.normalize(encode(texts), dim=-1).mean(dim=0); then / norm
    expected = []
    for name in ["cat", "person in shirt", "dog"]:
        class_embedding = F.normalize(tower.encode(CUPL[name]), dim=-1).mean(dim=0)
        class_embedding /= class_embedding.norm()
        expected.append(class_embedding)
    torch.testing.assert_close(queries.embeddings, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert queries.query_class.tolist() == [0, 0, 1]
    # the generic path is unchanged: equal counts per name, one mean
    generic = encode_names(tower.encode, ["cat"], TEMPLATES)
    feats = F.normalize(tower.encode([t.replace("{c}", "cat") for t in TEMPLATES]), dim=-1).mean(0)
    torch.testing.assert_close(generic[0], feats / feats.norm(), rtol=1e-5, atol=1e-6)
    assert cache_key("t", CUPL, classes) != cache_key("t", {**CUPL, "cat": ["a cat."]}, classes)


def test_class_specific_prompts_must_cover_every_class_name(tmp_path, tower):
    with pytest.raises(TemplateFileError, match=r"no prompts for 1 class name.*'bird'"):
        class_queries(tower.encode, [["cat"], ["bird"]], CUPL)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("datasets.json", json.dumps({"cifar10": TEMPLATES, "imagenet1k": TEMPLATES}),
     "template lists of several datasets.*own .json file"),
    ("mixed.json", json.dumps({"cat": ["a {c}."], "dog": ["a dog."]}), "use one kind per file"),
    ("bad.json", "[\"a {c}\",", "not valid JSON"),
    ("number.json", json.dumps([1, 2]), "not a string"),
    ("string.json", json.dumps("a photo of a {c}."), "its JSON is a str"),
    ("empty.json", "[]", "is empty"),
    ("noplace.json", json.dumps(["a photo."]), "no '\\{c\\}' placeholder"),
    ("list.txt", json.dumps(TEMPLATES), "holds JSON.*give it a .json suffix"),
    ("dict.txt", json.dumps(CUPL, indent=1), "holds JSON"),
])
def test_unknown_formats_are_refused_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(TemplateFileError, match=rf"template file .*{name}: .*{message}") as error:
        read_templates(tmp_path / name)
    assert "Supported formats" in str(error.value) or "cannot be read" in str(error.value)


def test_ovseg_runs_with_a_json_prompt_file(tmp_path):
    make_voc(tmp_path / "data")
    names = [synonyms[0] for synonyms in read_class_names(class_file("voc21.txt"))]
    synonyms = [name for line in read_class_names(class_file("voc21.txt")) for name in line]
    (tmp_path / "cupl.json").write_text(json.dumps({name: [f"a photo showing {name}."] for name in synonyms}))
    (tmp_path / "list.json").write_text(json.dumps(["a photo of a {c}."]))
    spec = TASKS.get("ovseg/voc21")
    family = TASK_FAMILIES.get("ovseg")()
    ctx = RunContext(data_root=tmp_path / "data", cache_dir=tmp_path / "cache", batch_size=4, limit=1)
    model = METHODS.get("raw")(tiny_clip_backbone())
    outcomes = {}
    for file in ("cupl.json", "list.json"):
        settings = family.resolve_settings(spec, None, ctx)
        settings.update(resize=40, templates=str(tmp_path / file))
        outcomes[file] = family.run(model, spec, settings, ctx)
    assert outcomes["cupl.json"].extra["num_queries"] == len(synonyms) and len(names) == 21
    assert outcomes["cupl.json"].extra["templates_sha256"] != outcomes["list.json"].extra["templates_sha256"]
    assert {o.extra["text_cache"] for o in outcomes.values()} == {"miss"}  # different prompts, different keys
