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
from phreg_bench.results.hashing import BACKBONE_IDENTITY_KEYS
from phreg_bench.results.provenance import provenance, utc_now
from phreg_bench.results.records import BackboneRef, MethodRef, Protocol, ResultRecord, RunIdentity, TaskRef, Timings
from phreg_bench.tasks.base import TaskOutcome

# the record section of tiny-vit as BackboneInfo.to_dict() wrote it (keys in that order): results and config
# hashes written before BackboneIdentity stay valid
TINY_VIT = {
    "name": "tiny-vit", "family": "builtin", "architecture": "vit(p8,w64,d4,h4)", "weights_id": "random-init(seed=0)",
    "weights_sha256": "6480e8935d7b782b96d1ba2a0b8ee3e27920fc62f5de88969a558354a7f447a6", "patch_size": 8,
    "embed_dim": 64, "output_dim": 64, "depth": 4, "num_heads": 4, "num_registers": 0, "has_text": False,
    "native_resolution": [64, 64], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "interpolation": "bicubic", "pos_resample": "bicubic", "extra": {},
}


def _record(section: dict) -> ResultRecord:
    identity = RunIdentity(TaskRef("t", "f", "1", "x"), BackboneRef(section), MethodRef("raw", {}), Protocol("p", {}),
                           seed=0, limit=None, precision="fp32")
    outcome = TaskOutcome(main_metric="m", metrics={"m": 1.0}, num_samples=1)
    return ResultRecord.measured(identity, outcome=outcome, higher_is_better=True, expected_samples=1,
                                 timings=Timings(total_s=0.0), provenance=provenance([], utc_now(), utc_now()))


def test_describe_is_the_record_section_it_always_was():
    section = build_backbone("tiny-vit").describe()
    assert section == TINY_VIT and list(section) == list(TINY_VIT)
    assert set(BACKBONE_IDENTITY_KEYS) | {"pos_resample"} <= set(section)  # the hashed identity fields
    record = _record(section)
    # a strict read of the written record accepts the section and keeps it as it is
    assert ResultRecord.from_json(record.to_json(), strict=True).identity.backbone.description == TINY_VIT


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
