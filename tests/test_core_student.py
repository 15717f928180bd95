"""The student: registers, placement, last block, positional embedding at the training grid, unlock sets."""

from __future__ import annotations

import math

import pytest
import torch
from test_core_fixtures import one_thread, random_images, tiny_clip, tiny_timm  # noqa: F401

from phreg_core.last_block import PRESETS
from phreg_core.student import Student, UnlockSet, resample_pos_parameter
from phreg_core.teacher import default_teacher


def test_unlock_sets_follow_the_code_and_the_paper():
    assert UnlockSet.official(clip=True).last_blocks == 2  # clip_reg.py: resblocks[-2] and [-1]
    assert UnlockSet.official(clip=False).last_blocks == 1  # distill_main.py: encoder.layer[-1]
    assert UnlockSet.parse("paper", clip=True) == UnlockSet(True, True, True, 1)
    assert UnlockSet.parse("registers,pos_embed,last_blocks=3", clip=False) == UnlockSet(True, True, False, 3)
    with pytest.raises(ValueError, match="unknown unlock item"):
        UnlockSet.parse("registers,ffn", clip=False)


def test_timm_student_trainable_set_and_prefix_registers():
    base = tiny_timm()
    student = Student(base, 4)
    names = {n for n, _ in student.trainable_named_parameters()}
    expected = {"registers", "vision.model.pos_embed", "vision.model.patch_embed.proj.weight",
                "vision.model.patch_embed.proj.bias"}
    expected |= {f"vision.model.blocks.2.{n}" for n, _ in base.blocks[2].named_parameters()}
    assert names == expected
    assert student.last_block is None and not student.project
    out = student.forward_tokens(random_images(2))[0]
    assert out.patches.shape == (2, 32, 4, 4)
    assert out.prefix.shape == (2, 1 + 4, 32)  # CLS then the 4 new registers (timm reg_tokens layout)
    assert student.registers.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.35)  # randn / sqrt(d)


def test_clip_student_maskclip_last_block_two_blocks_and_appended_registers():
    base = tiny_clip()
    student = Student(base, 3, train_grid=(6, 6))
    assert student.last_block == PRESETS["maskclip"] and student.project
    names = {n for n, _ in student.trainable_named_parameters()}
    assert "vision.visual.conv1.weight" in names and "vision.visual.positional_embedding" in names
    blocks = {n.split(".")[4] for n in names if ".resblocks." in n}
    assert blocks == {"1", "2"}  # the last two of three blocks
    assert not any("ln_pre" in n or "ln_post" in n or n.endswith("proj") and "attn" not in n for n in names)
    assert "vision.visual.class_embedding" not in names
    assert student.vision.visual.positional_embedding.shape == (1 + 36, 32)
    assert student.vision.native_grid == (6, 6)
    out = student.forward_tokens(random_images(2, size=48), project=True)[0]
    assert out.patches.shape == (2, 16, 6, 6)  # projected to output_dim
    assert out.prefix.shape == (2, 1 + 3, 16)  # CLS, then the 3 appended registers, projected


def test_pos_embed_stored_at_train_grid_equals_resampling_on_the_fly():
    """With no registers and the plain last block, the student is the base at the training grid."""
    for base, size in ((tiny_clip(), 48), (tiny_timm(), 48)):
        student = Student(base, 0, last_block=None, train_grid=(6, 6), resample_pos_embed=True, project=False)
        images = random_images(2, size=size)
        got = student.forward_tokens(images)[0].patches
        want = base.forward_tokens(images)[0].patches
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("policy", ["bicubic", "bicubic-offset", "bicubic-antialias"])
def test_resample_pos_parameter_keeps_prefix_rows(policy):
    pos = torch.randn(1 + 16, 8)
    out = resample_pos_parameter(pos, (4, 4), (8, 8), policy)
    assert out.shape == (1 + 64, 8) and torch.equal(out[0], pos[0])
    timm_pos = torch.randn(1, 2 + 16, 8)
    assert resample_pos_parameter(timm_pos, (4, 4), (4, 4), policy).equal(timm_pos)


def test_student_is_a_copy_and_base_is_untouched():
    base = tiny_clip()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    student = Student(base, 2, train_grid=(6, 6))
    with torch.no_grad():
        for _, p in student.trainable_named_parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert base.native_grid == (4, 4)


def test_default_teachers():
    clip_teacher = default_teacher(tiny_clip())
    assert clip_teacher.last_block == PRESETS["naclip"] and clip_teacher.project
    assert clip_teacher(random_images(1, size=48)).shape == (1, 16, 6, 6)
    timm = tiny_timm()
    plain = default_teacher(timm)
    assert plain.last_block is None and not plain.project
    images = random_images(1)
    assert torch.equal(plain(images), timm.forward_tokens(images)[0].patches)
    assert not any(p.requires_grad for p in plain.parameters())
