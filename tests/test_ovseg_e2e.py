"""End to end on generated fixtures: the ``ovseg`` family run directly, and `phreg-bench run` for every
method × protocol × dataset, with a tiny random-init CLIP (the real ViT-B/16 is exercised when registered)."""

from __future__ import annotations

import pytest
from fixtures_seg import make_all, make_voc, tiny_clip_backbone

from phreg_bench.cli import main
from phreg_bench.datasets.base import DatasetError
from phreg_bench.registries import METHODS, TASK_FAMILIES, TASKS
from phreg_bench.results.store import read_result
from phreg_bench.tasks.base import RunContext

OVSEG_TASKS = ["ovseg/voc21", "ovseg/voc20", "ovseg/context60", "ovseg/context59", "ovseg/coco_object",
               "ovseg/coco_stuff", "ovseg/cityscapes", "ovseg/ade20k"]
METHOD_NAMES = ["raw", "maskclip", "maskclip-official", "sclip", "clearclip", "naclip"]
PROTOCOLS = ["phreg", "naclip", "sclip", "clearclip"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("ovseg_data"))


@pytest.fixture(scope="module")
def one_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("templates") / "one.txt"
    path.write_text("a photo of a {c}.\n")
    return path


def test_every_task_has_all_protocols():
    for name in OVSEG_TASKS:
        spec = TASKS.get(name)
        assert spec.family == "ovseg" and spec.default_protocol == "phreg" and spec.metric == "mIoU"
        assert set(spec.protocols) == set(PROTOCOLS), name
        assert spec.num_samples in (500, 1449, 2000, 5000, 5105)
    assert {TASKS.get(n).short_name for n in OVSEG_TASKS} >= {"voc", "ade", "context", "stuff", "city", "coco_object"}


@pytest.mark.parametrize("task", OVSEG_TASKS)
def test_family_runs_on_each_dataset_layout(data_root, one_template, tmp_path, task):
    spec = TASKS.get(task)
    family = TASK_FAMILIES.get("ovseg")()
    ctx = RunContext(data_root=data_root, cache_dir=tmp_path / "cache", batch_size=4)
    settings = family.resolve_settings(spec, None, ctx)
    settings.update(resize=40, templates=str(one_template))
    outcome = family.run(METHODS.get("naclip")(tiny_clip_backbone()), spec, settings, ctx)
    assert outcome.num_samples == 3 and outcome.main_metric == "mIoU"
    assert set(outcome.metrics) == {"mIoU", "mAcc", "aAcc", "pearson"}
    assert 0 <= outcome.metrics["mIoU"] <= 100 and -1 <= outcome.metrics["pearson"] <= 1
    assert len(outcome.per_class) == DATA_CLASSES[spec.dataset]
    assert outcome.extra["text_cache"] == "miss" and outcome.extra["dataset_samples"] == 3
    again = family.run(METHODS.get("naclip")(tiny_clip_backbone()), spec, settings, ctx)
    assert again.extra["text_cache"] == "hit" and again.metrics == outcome.metrics  # deterministic


DATA_CLASSES = {"voc21": 21, "voc20": 20, "context60": 60, "context59": 59, "coco_object": 81,
                "coco_stuff164k": 171, "cityscapes": 19, "ade20k": 150}


def test_limit_and_skip_corrupt(tmp_path, one_template):
    make_voc(tmp_path)
    (tmp_path / "VOCdevkit/VOC2012/JPEGImages/2007_000042.jpg").write_bytes(b"broken")
    spec, family = TASKS.get("ovseg/voc21"), TASK_FAMILIES.get("ovseg")()
    model = METHODS.get("maskclip")(tiny_clip_backbone())
    settings = {**family.resolve_settings(spec, None, RunContext()), "resize": 40, "templates": str(one_template)}
    limited = family.run(model, spec, settings, RunContext(data_root=tmp_path, cache_dir=tmp_path, limit=1))
    assert limited.num_samples == 1
    with pytest.raises(DatasetError, match="2007_000042.jpg"):
        family.run(model, spec, settings, RunContext(data_root=tmp_path, cache_dir=tmp_path))
    ctx = RunContext(data_root=tmp_path, cache_dir=tmp_path, options={"skip_corrupt": True})
    skipped = family.run(model, spec, settings, ctx)
    assert skipped.num_samples == 2 and skipped.extra["skipped"] == 1
    assert "2007_000042.jpg" in skipped.extra["skipped_files"][0]


def test_unknown_setting_is_rejected(data_root):
    spec, family = TASKS.get("ovseg/voc21"), TASK_FAMILIES.get("ovseg")()
    settings = {**family.resolve_settings(spec, None, RunContext()), "resise": 40}
    with pytest.raises(ValueError, match="resise"):
        family.run(METHODS.get("raw")(tiny_clip_backbone()), spec, settings, RunContext(data_root=data_root))


# The brief's command on a size-reduced ViT-B/16 config (2 blocks, real tokenizer and text tower code).
REDUCED_B16 = ["openai-clip-vit-b16", "--backbone-option", "reduced=true"]


def _cli_run(backbone, method, protocol, data_root, results, cache, template, extra=()):
    backbone = [backbone] if isinstance(backbone, str) else list(backbone)
    return main(["run", "--backbone", *backbone, "--random-init", "--tasks", ",".join(OVSEG_TASKS),
                 "--method", method, "--protocol", protocol, "--data-root", str(data_root),
                 "--results-dir", str(results), "--cache-dir", str(cache), "--batch-size", "4",
                 "--protocol-override", "resize=40", "--protocol-override", f"templates={template}", *extra])


def _check_results(results, pairs, limit):
    """Every (method, protocol) wrote a valid result for every task, with the protocol's settings recorded."""
    files = sorted(results.rglob("*.json"))
    assert len(files) == len(OVSEG_TASKS) * len(pairs)
    seen = set()
    for path in files:
        record = read_result(path)  # schema validation, strict JSON
        task = TASKS.get(record.identity.task.name)
        protocol = record.identity.protocol.name
        settings = record.identity.protocol.settings
        overridden = {"resize", "templates"}
        assert {k: settings[k] for k in task.protocols[protocol] if k not in overridden} == \
            {k: v for k, v in task.protocols[protocol].items() if k not in overridden}
        assert settings["resize"] == 40
        assert record.status.num_samples == limit and record.status.complete is False
        values = record.metrics.values
        assert {"mIoU", "mAcc", "aAcc"} <= set(values) and record.metrics.main == "mIoU"
        assert len(record.metrics.per_class) == DATA_CLASSES[task.dataset]
        seen.add((record.identity.method.name, protocol))
    assert seen == set(pairs)


def test_cli_every_method_and_every_protocol(data_root, one_template, tmp_path):
    """Every method and every protocol at least once (paired round-robin), all 8 tasks, 1 image each;
    the full product is the slow test below."""
    pairs = [(m, PROTOCOLS[i % len(PROTOCOLS)]) for i, m in enumerate(METHOD_NAMES)]
    for method, protocol in pairs:
        assert _cli_run(REDUCED_B16, method, protocol, data_root, tmp_path / "r", tmp_path / "c", one_template,
                        extra=["--limit", "1"]) == 0
    _check_results(tmp_path / "r", pairs, limit=1)


@pytest.mark.slow
def test_cli_full_method_protocol_matrix(data_root, one_template, tmp_path):
    pairs = [(m, p) for m in METHOD_NAMES for p in PROTOCOLS]
    for method, protocol in pairs:
        assert _cli_run(REDUCED_B16, method, protocol, data_root, tmp_path / "r", tmp_path / "c",
                        one_template) == 0
    _check_results(tmp_path / "r", pairs, limit=3)


@pytest.mark.slow
def test_cli_with_full_size_random_init_vit_b16(data_root, one_template, tmp_path):
    assert _cli_run("openai-clip-vit-b16", "naclip", "phreg", data_root, tmp_path / "r", tmp_path / "c",
                    one_template, extra=["--limit", "1"]) == 0
    _check_results(tmp_path / "r", [("naclip", "phreg")], limit=1)
