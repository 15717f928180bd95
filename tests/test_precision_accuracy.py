"""How far ``--precision bf16`` (CPU autocast of the tower) moves the numbers, on the test fixtures.

The bounds are the ones stated in :mod:`phreg_bench.precision` (about 3x what was measured there): ovseg
cosine logits move by at most ``OVSEG_LOGIT_BOUND``, a pixel's class changes only where the fp32 decision
was within that distance (top-2 class gap, or the ``prob_thd`` boundary), the mIoU by at most
``OVSEG_MIOU_BOUND`` points; probe features move by at most ``FEATURE_REL_BOUND`` of their largest value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_seg import make_voc, tiny_clip_backbone

from phreg_bench.metrics.segmentation import SegmentationMetric
from phreg_bench.precision import FEATURE_REL_BOUND, OVSEG_LOGIT_BOUND, OVSEG_MIOU_BOUND
from phreg_bench.probes import features as feats
from phreg_bench.registries import BACKBONES, DATASETS, METHODS, TASKS
from phreg_bench.tasks.base import RunContext
from phreg_bench.tasks.ovseg.harness import HarnessSettings, OVSegPredictor, classify
from phreg_bench.tasks.ovseg.text import class_queries, read_class_names
from phreg_bench.tasks.specs import class_file


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    make_voc(root)
    return DATASETS.get("voc21")(root, split="val")


def _decision_margin(logits: torch.Tensor, queries, settings: HarnessSettings) -> torch.Tensor:
    """Per pixel, how far (in logit units) the fp32 decision is from flipping: the top-2 class gap, or the
    distance of the top probability from ``prob_thd`` (``|log p − log thd| / (2 s)``: each logit moving by
    ``d`` moves ``log p`` by at most ``2 s d``)."""
    class_logits = queries.synonym_plan(logits)
    top2 = class_logits.topk(2, dim=0).values
    margin = top2[0] - top2[1]
    if settings.prob_thd > 0:
        log_p = -torch.logsumexp(settings.logit_scale * (logits - top2[0]), dim=0)
        margin = torch.minimum(margin, (log_p - np.log(settings.prob_thd)).abs() / (2 * settings.logit_scale))
    return margin


@pytest.mark.parametrize(("method", "protocol"), [("naclip", "naclip"), ("naclip", "phreg"), ("raw", "clearclip"),
                                                  ("sclip", "sclip")])
@torch.no_grad()
def test_ovseg_bf16_agrees_with_fp32_within_the_stated_bound(voc, method, protocol):
    spec = TASKS.get("ovseg/voc21")
    _, preset = spec.protocol(protocol)
    settings = HarnessSettings.from_settings({**preset, "resize": 40})
    backbone = tiny_clip_backbone()
    models = {p: METHODS.get(method)(backbone).set_precision(p) for p in ("fp32", "bf16")}
    queries = class_queries(models["fp32"].encode_text, read_class_names(class_file(spec.classes)),
                            ["a photo of a {c}."])
    predictors = {p: OVSegPredictor(model, queries, settings, batch_size=4) for p, model in models.items()}
    metrics = {p: SegmentationMetric(21) for p in predictors}
    flips = 0
    for index in range(len(voc)):
        sample = voc[index]
        logits = {p: predictor.dense_logits(sample.image) for p, predictor in predictors.items()}
        delta = float((logits["fp32"] - logits["bf16"]).abs().max())
        assert 0 < delta <= OVSEG_LOGIT_BOUND  # bf16 did run, and moved the logits this little
        preds = {p: classify(logits[p], queries, settings) for p in predictors}
        changed = preds["fp32"] != preds["bf16"]
        if settings.area_thd is None:  # (SCLIP's area rule is per image: it may drop a class in one only)
            margin = _decision_margin(logits["fp32"], queries, settings)
            assert bool((margin[changed] <= 2 * delta).all())  # only near-ties changed class
        flips += int(changed.sum())
        for p in predictors:
            metrics[p].update(preds[p], torch.from_numpy(sample.label))
    miou = {p: m.compute()["mIoU"] for p, m in metrics.items()}
    assert abs(miou["fp32"] - miou["bf16"]) <= OVSEG_MIOU_BOUND, (miou, flips)


def test_probe_features_bf16_within_the_stated_bound():
    model = METHODS.get("raw")(BACKBONES.get("tiny-vit")(None, random_init=True))
    images = np.random.default_rng(0).integers(0, 256, size=(4, 48, 64, 3)).astype(np.uint8)
    out = {p: feats.extract(model.set_precision(p), images, RunContext(), pad_to_patch=True, with_cls=True)
           for p in ("fp32", "bf16")}
    for index in (0, 1):  # patches, CLS
        reference, low = out["fp32"][index], out["bf16"][index]
        assert low.dtype == torch.float32
        relative = float((reference - low).abs().max() / reference.abs().max())
        assert 0 < relative <= FEATURE_REL_BOUND
