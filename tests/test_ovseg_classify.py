"""``classify`` (max + log-sum-exp) against literal transcriptions of the reference post-processing.

The references softmax over all queries, take the one-hot synonym max, optionally apply SCLIP's area rule,
``argmax`` and threshold; ``classify`` decides the same from the logits without the ``[Q, H, W]`` softmax.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from phreg_bench.tasks.ovseg.harness import HarnessSettings, classify, count_values
from phreg_bench.tasks.ovseg.text import ClassQueries, SynonymPlan


def naclip_postprocess(seg_logits, query_idx, logit_scale, prob_thd):
    # sinahmr/NACLIP naclip.py NACLIP.postprocess_result (one image; PixelData bookkeeping dropped)
    for i in range(seg_logits.shape[0]):
        seg_logits = seg_logits[i] * logit_scale
        seg_logits = seg_logits.softmax(0)  # n_queries * w * h

        num_cls, num_queries = max(query_idx) + 1, len(query_idx)
        if num_cls != num_queries:
            seg_logits = seg_logits.unsqueeze(0)
            cls_index = nn.functional.one_hot(query_idx)
            cls_index = cls_index.T.view(num_cls, num_queries, 1, 1)
            seg_logits = (seg_logits * cls_index).max(1)[0]

        seg_pred = seg_logits.argmax(0, keepdim=True)
        seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0
        return seg_pred[0]


def phreg_postprocess(seg_logits, query_idx, logit_scale, prob_thd):
    # 0raiser0/PH-Reg zero_shot/segmentor.py DistilledMaskCLIP.postprocess_result (one image)
    for i in range(seg_logits.shape[0]):
        seg_probs = torch.softmax(seg_logits[i] * logit_scale, dim=0)  # n_queries * w * h

        num_cls, num_queries = max(query_idx) + 1, len(query_idx)
        if num_cls != num_queries:
            seg_probs = seg_probs.unsqueeze(0)
            cls_index = nn.functional.one_hot(query_idx)
            cls_index = cls_index.T.view(num_cls, num_queries, 1, 1)
            seg_probs = (seg_probs * cls_index).max(1)[0]

        seg_pred = seg_probs.argmax(0, keepdim=True)
        seg_pred[seg_probs.max(0, keepdim=True)[0] < prob_thd] = 0
        seg_probs /= seg_probs.sum(0, keepdim=True)
        return seg_pred[0]


def sclip_postprocess(seg_logits, query_idx, logit_scale, prob_thd, area_thd):
    # wangf3014/SCLIP clip_segmentor.py CLIPForSegmentation.postprocess_result (one image)
    for i in range(seg_logits.shape[0]):
        seg_logits = seg_logits[i] * logit_scale
        seg_logits = seg_logits.softmax(0)  # n_queries * w * h

        num_cls, num_queries = max(query_idx) + 1, len(query_idx)
        if num_cls != num_queries:
            seg_logits = seg_logits.unsqueeze(0)
            cls_index = nn.functional.one_hot(query_idx)
            cls_index = cls_index.T.view(num_cls, num_queries, 1, 1)
            seg_logits = (seg_logits * cls_index).max(1)[0]
            seg_pred = seg_logits.argmax(0, keepdim=True)

        if area_thd is not None:
            # Force segmentations with area < self.area_thd to 0 (background)
            predictions = nn.functional.one_hot(seg_logits.argmax(0), num_cls).to(seg_logits.dtype)
            area_pred = predictions[:, :, 1:].sum((0, 1), keepdim=True)  # prone background
            area_pred = (area_pred > area_thd * area_pred.sum()).to(seg_logits.dtype)
            seg_logits[1:] *= area_pred.transpose(0, -1)

        seg_pred = seg_logits.argmax(0, keepdim=True)
        seg_pred[seg_logits.max(0, keepdim=True)[0] < prob_thd] = 0
        return seg_pred[0]


SYNONYMS = [[0, 0, 0, 1, 2, 2, 3, 4, 5, 5, 5, 5],  # class files: each class's synonyms on one line
            [0, 1, 2, 3, 4, 5],  # no synonyms
            [2, 0, 1, 0, 3, 2, 0]]  # queries in no class order


def random_logits(rng: np.random.Generator, query_idx: list[int], size=(23, 31), kind="cosine") -> torch.Tensor:
    """``[1, Q, H, W]`` logits: cosine-like, quantised (exact ties across classes) or wide (softmax underflow)."""
    num_queries = len(query_idx)
    bias = rng.normal(0, 0.05, size=(num_queries, 1, 1))  # some classes rarely win: the area rule bites
    if kind == "cosine":
        values = 0.2 + 0.05 * rng.standard_normal((num_queries, *size)) + bias
    elif kind == "ties":
        values = np.round(rng.standard_normal((num_queries, *size)) * 2 + 40 * bias) / 40
    else:  # "wide": probabilities of losing classes underflow to 0 at logit scale 40
        values = 4.0 * rng.standard_normal((num_queries, *size)) + 20 * bias
    return torch.from_numpy(values.astype(np.float32))[None]


def queries_for(query_idx: list[int]) -> ClassQueries:
    classes = torch.tensor(query_idx)
    return ClassQueries(torch.zeros(len(query_idx), 4), classes, [str(i) for i in query_idx], int(classes.max()) + 1)


@pytest.mark.parametrize("query_idx", SYNONYMS)
@pytest.mark.parametrize("kind", ["cosine", "ties", "wide"])
@pytest.mark.parametrize(("logit_scale", "prob_thd"), [(40.0, 0.0), (40.0, 0.1), (65.0, 0.5), (40.0, 0.95)])
def test_classify_equals_naclip_and_phreg_postprocess(query_idx, kind, logit_scale, prob_thd):
    rng = np.random.default_rng([len(query_idx), int(logit_scale), int(100 * prob_thd), len(kind)])
    seg_logits = random_logits(rng, query_idx, kind=kind)
    query = torch.tensor(query_idx, dtype=torch.int64)
    expected = naclip_postprocess(seg_logits, query, logit_scale, prob_thd)
    assert torch.equal(phreg_postprocess(seg_logits, query, logit_scale, prob_thd), expected)
    settings = HarnessSettings(resize=0, crop=0, stride=1, logit_scale=logit_scale, prob_thd=prob_thd)
    ours = classify(seg_logits[0], queries_for(query_idx), settings)
    assert ours.dtype == torch.int64 and ours.shape == expected.shape
    assert torch.equal(ours, expected)
    if prob_thd in (0.1, 0.5):
        assert 0 < int((expected == 0).sum()) < expected.numel()  # the threshold decided some pixels


@pytest.mark.parametrize("query_idx", SYNONYMS)
@pytest.mark.parametrize("kind", ["cosine", "ties", "wide"])
@pytest.mark.parametrize(("prob_thd", "area_thd"), [(0.0, 0.1), (0.1, 0.1), (0.0, "drop"), (0.1, "drop")])
def test_classify_equals_sclip_postprocess_with_the_area_rule(query_idx, kind, prob_thd, area_thd):
    rng = np.random.default_rng([len(query_idx), int(100 * prob_thd), len(str(area_thd)), len(kind), 7])
    seg_logits = random_logits(rng, query_idx, kind=kind)
    query = torch.tensor(query_idx, dtype=torch.int64)
    dropped = None
    if area_thd == "drop":  # a threshold between the two smallest non-background areas: one class goes
        before = naclip_postprocess(seg_logits, query, 65, 0.0)
        area = torch.bincount(before.flatten(), minlength=int(query.max()) + 1)[1:].double()
        fractions, order = torch.sort(area / area.sum())
        area_thd = float(fractions[:2].mean())
        dropped = int(order[0]) + 1
    expected = sclip_postprocess(seg_logits, query, 65, prob_thd, area_thd)
    if dropped is not None:
        assert dropped not in expected.unique().tolist()
    settings = HarnessSettings(resize=0, crop=0, stride=1, logit_scale=65, prob_thd=prob_thd, area_thd=area_thd)
    assert torch.equal(classify(seg_logits[0], queries_for(query_idx), settings), expected)


def test_area_rule_sends_an_all_zero_column_to_class_0():
    """Kept classes whose probabilities all underflow: the reference's argmax of zeros is class 0."""
    seg_logits = torch.full((1, 3, 1, 12), -5.0)
    seg_logits[0, 1, 0, :10] = 5.0  # class 1 wins 10 pixels
    seg_logits[0, 2, 0, 10:] = 5.0  # class 2 wins 2 pixels (< 0.3 of the non-background area): dropped
    settings = HarnessSettings(resize=0, crop=0, stride=1, logit_scale=40, area_thd=0.3)
    expected = sclip_postprocess(seg_logits, torch.tensor([0, 1, 2]), 40, 0.0, 0.3)
    assert expected[0, 10:].tolist() == [0, 0]  # exp(-400) underflows for classes 0 and 1 there
    assert torch.equal(classify(seg_logits[0], queries_for([0, 1, 2]), settings), expected)


def test_class_logits_argument_is_the_synonym_max():
    rng = np.random.default_rng(3)
    query_idx = SYNONYMS[0]
    logits = random_logits(rng, query_idx)[0]
    queries = queries_for(query_idx)
    settings = HarnessSettings(resize=0, crop=0, stride=1, logit_scale=40, prob_thd=0.1)
    class_logits = queries.synonym_plan(logits)
    assert torch.equal(classify(logits, queries, settings, class_logits), classify(logits, queries, settings))


@pytest.mark.parametrize("query_idx", SYNONYMS)
def test_synonym_plan_equals_the_one_hot_max(query_idx):
    scores = torch.rand(len(query_idx), 5, 6)  # probabilities are >= 0, so the one-hot product is exact
    query = torch.tensor(query_idx)
    num_cls = int(query.max()) + 1
    one_hot = nn.functional.one_hot(query).T.view(num_cls, len(query_idx), 1, 1)
    expected = (scores.unsqueeze(0) * one_hot).max(1)[0]
    assert torch.equal(SynonymPlan(query, num_cls)(scores), expected)


def test_count_values_is_bincount():
    values = torch.tensor([[0, 3, 3], [1, 3, 0]])
    assert count_values(values, 5).tolist() == torch.bincount(values.flatten(), minlength=5).tolist()


def test_pearson_two_pass_std_equals_torch_std():
    """The Pearson metric's two-pass std keeps its value: the previous ``torch.std`` formulation, to 1e-6."""
    import math

    from phreg_bench.metrics.segmentation import pearson_tensor

    generator = torch.Generator().manual_seed(0)
    scores = 0.2 + 0.05 * torch.randn(21, 37, 53, generator=generator)
    target = torch.randint(0, 21, (37, 53), generator=generator)
    target[:5] = 255
    mean, std = scores.mean(0), scores.std(0, unbiased=False)
    picked = scores.gather(0, target.clamp(0, 20)[None])[0]
    r = (picked - mean) / (std * math.sqrt(20))
    expected = r[target != 255].double().mean()
    assert float(pearson_tensor(scores, target)) == pytest.approx(float(expected), rel=1e-6)
