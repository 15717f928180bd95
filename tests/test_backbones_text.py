"""The open_clip text tower: batched encoding whose context stops at the batch's longest prompt gives the
same embeddings as open_clip's own ``encode_text`` on the full 77-token context."""

from __future__ import annotations

import copy

import pytest
import torch

from phreg_bench.backbones import open_clip_backbones as ocb
from phreg_bench.backbones.open_clip_text import OpenClipTextTower

PROMPTS = ["a photo of a cat.", "a bad photo of the large red double-decker bus parked by the station.",
           "dog", "a sculpture of a traffic light.", "an origami boat."]
TOL = 1e-5


def _tiny_model(**text_overrides):
    import open_clip

    overrides = ocb._reduce(open_clip.get_model_config("ViT-B-16"), ocb.reduced_config(True))
    overrides["text_cfg"].update(text_overrides)
    if text_overrides:
        overrides["force_custom_text"] = True
    preprocess = {}
    return ocb._create("ViT-B-16", seed=0, quick_gelu=True, preprocess=preprocess, overrides=overrides,
                       img_size=None)


def _check(model, prompts, *, expect_truncation: bool):
    tokenizer = ocb.tokenizer_for("ViT-B-16")
    tower = OpenClipTextTower(model, tokenizer, identity="test")
    assert tower.can_truncate is expect_truncation
    tokens = tokenizer(prompts)
    assert tokens.shape[1] == 77
    truncated = tower.truncate(tokens)
    if expect_truncation:
        assert truncated.shape[1] == int((tokens != 0).sum(1).max())  # up to the last end-of-text token
    with torch.no_grad():
        reference = model.encode_text(tokens)
    mine = tower.encode(prompts)
    assert mine.shape == reference.shape and not mine.requires_grad
    torch.testing.assert_close(mine, reference, atol=TOL, rtol=0)
    return tower, truncated.shape[1]


def test_clip_argmax_pooling_truncates_exactly():
    model = _tiny_model()
    assert type(model).__name__ == "CLIP" and model.text_pool_type == "argmax"
    _, length = _check(model, PROMPTS, expect_truncation=True)
    assert length < 77


def test_truncation_with_a_prompt_filling_the_whole_context():
    long_prompt = " ".join(["word"] * 100)  # the tokenizer cuts it to 77 tokens ending with end-of-text
    _, length = _check(_tiny_model(), ["a cat", long_prompt], expect_truncation=True)
    assert length == 77


def test_eos_pooling_truncates_exactly():
    model = _tiny_model(pool_type="eos", eos_id=49407)  # SimpleTokenizer's end-of-text id
    assert model.text.pool_type == "eos"
    _check(model, PROMPTS, expect_truncation=True)


def test_bidirectional_last_token_pooling_keeps_the_full_context():
    model = _tiny_model(pool_type="last", no_causal_mask=True)
    _check(model, PROMPTS, expect_truncation=False)


def test_batching_does_not_change_the_embeddings():
    model = _tiny_model()
    tower = OpenClipTextTower(model, ocb.tokenizer_for("ViT-B-16"), identity="test")
    whole = tower.encode(PROMPTS)
    tower.batch_size = 2
    torch.testing.assert_close(tower.encode(PROMPTS), whole, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="at least one prompt"):
        tower.encode([])


def test_backbone_text_tower_is_in_the_projected_image_space():
    from phreg_bench.registries import BACKBONES

    backbone = BACKBONES.get("openai-clip-vit-b16")(None, random_init=True, reduced=True)
    text = backbone.encode_text(PROMPTS)
    assert text.shape == (len(PROMPTS), backbone.output_dim)
    assert backbone.text.identity.endswith(backbone.identity.weights_sha256[:16])
    # the tower shares the model's parameters: moving the backbone moves the text tower with it
    params = {id(p) for p in backbone.parameters()}
    assert all(id(p) in params for p in backbone.text.parameters())
    other = copy.deepcopy(backbone).double()
    assert other.text.encode(PROMPTS[:1]).dtype == torch.float32  # always returned as float32
