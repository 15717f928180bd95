"""One backbone identity: a frozen ``BackboneIdentity`` made once by the factory, geometry read from the adapter,
and ``Backbone.describe()`` — the ``backbone`` section of every result record — unchanged from before."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
import torch

from phreg_bench.backbones.base import Backbone, BackboneIdentity
from phreg_bench.backbones.build import build_backbone
from phreg_bench.results import schema
from phreg_bench.results.hashing import BACKBONE_IDENTITY_KEYS
from phreg_bench.results.records import measured_record

# the record section of tiny-vit as BackboneInfo.to_dict() wrote it (keys in that order): results and config
# hashes written before BackboneIdentity stay valid
TINY_VIT = {
    "name": "tiny-vit", "family": "builtin", "architecture": "vit(p8,w64,d4,h4)", "weights_id": "random-init(seed=0)",
    "weights_sha256": "6480e8935d7b782b96d1ba2a0b8ee3e27920fc62f5de88969a558354a7f447a6", "patch_size": 8,
    "embed_dim": 64, "output_dim": 64, "depth": 4, "num_heads": 4, "num_registers": 0, "has_text": False,
    "native_resolution": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "interpolation": "bicubic", "pos_resample": "bicubic", "extra": {},
}


def _record(section: dict) -> dict:
    return measured_record(task={"name": "t", "family": "f", "version": "1", "spec_hash": "x"}, backbone=section,
                           method={"name": "raw", "config": {}}, protocol={"name": "p", "settings": {}}, seed=0,
                           limit=None, precision="fp32")


def test_describe_is_the_record_section_it_always_was():
    section = build_backbone("tiny-vit").describe()
    assert section == TINY_VIT and list(section) == list(TINY_VIT)
    # the schema's required backbone fields and the hashed identity fields are all there
    assert set(schema._NESTED["backbone"]) | set(BACKBONE_IDENTITY_KEYS) | {"pos_resample"} <= set(section)
    schema.validate({**_record(section), "metrics": {"main": "m", "higher_is_better": True, "values": {"m": 1.0}},
                     "status": {"complete": True, "num_samples": 1}, "timings": {}, "provenance": {}})


def test_planted_extra_is_frozen_but_recorded_as_plain_json():
    backbone = build_backbone("planted-vit")
    section = backbone.describe()
    assert section["extra"]["register_neurons"] == {"2": [0, 175]} and type(section["extra"]["planted"]) is dict
    with pytest.raises(TypeError):
        backbone.identity.extra["register_neurons"]["2"] = [1]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        backbone.identity.weights_sha256 = None  # type: ignore[misc]
    for clone in (copy.deepcopy(backbone.identity), pickle.loads(pickle.dumps(backbone.identity))):
        assert clone == backbone.identity  # backbones are deep-copied (students) and pickled (workers)


def test_geometry_is_read_live_from_the_adapter():
    backbone = build_backbone("tiny-vit")
    vision = backbone.vision
    assert (backbone.patch_size, backbone.embed_dim, backbone.output_dim, backbone.depth, backbone.num_heads) == \
        (vision.patch_size, vision.embed_dim, vision.output_dim, vision.depth, vision.num_heads)
    assert backbone.native_resolution == vision.native_resolution == (64, 64)
    assert backbone.has_class_token and not backbone.has_text and backbone.num_registers == 0
    identity = backbone.identity
    backbone.set_pos_resample("bicubic-offset")  # the policy follows the adapter; the identity is not touched
    assert backbone.pos_resample == backbone.describe()["pos_resample"] == "bicubic-offset"
    assert backbone.identity is identity


def test_a_text_tower_is_registered_once():
    backbone = build_backbone("open_clip:ViT-B-32/laion2b_s34b_b79k", random_init=True, reduced=True)
    keys = list(backbone.state_dict())
    text = [key for key in keys if key.startswith("text.")]
    assert text and len(keys) == len(set(keys)) == len(backbone.vision.state_dict()) + len(text)
    assert not any(key.startswith("text_module.") for key in keys)


def test_a_backbone_is_made_from_an_adapter_and_an_identity():
    source = build_backbone("tiny-vit", seed=1)
    identity = BackboneIdentity(name="mine", family="custom", architecture="vit", weights_id="w", weights_sha256=None)
    backbone = Backbone(source.vision, identity)
    assert backbone.name == "mine" and backbone.describe()["extra"] == {}
    images = torch.rand(1, 3, 16, 24)
    torch.testing.assert_close(backbone.forward_tokens(backbone.normalize(images))[0].patches,
                               source.forward_tokens(source.normalize(images))[0].patches, atol=0, rtol=0)
