"""The student shares its frozen weights with the base: same numbers as a full copy, one tower in memory,
and training never touches the base (the teacher stays the frozen original)."""

from __future__ import annotations

import pytest
import torch
from test_core_fixtures import one_thread, random_images, tiny_clip, tiny_timm  # noqa: F401

from phreg_core.data import TensorImageDataset
from phreg_core.recipe import Recipe, RunOptions
from phreg_core.student import Student
from phreg_core.teacher import default_teacher
from phreg_core.trainer import distill

CONFIGS = [dict(train_grid=(6, 6)), dict(unlock="paper"), dict(unlock="registers"),
           dict(unlock="registers,patch_embed,last_blocks=3", train_grid=(4, 4))]


def _storage_bytes(tensors) -> int:
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(seen.values())


@pytest.mark.parametrize("make", [tiny_timm, tiny_clip], ids=["timm", "open_clip"])
@pytest.mark.parametrize("config", CONFIGS, ids=["grid", "paper", "registers", "patch+3"])
@torch.no_grad()
def test_shared_student_equals_the_copying_student(make, config):
    base = make()
    shared, copied = Student(base, 4, **config), Student(base, 4, share_frozen=False, **config)
    assert [n for n, _ in shared.named_parameters()] == [n for n, _ in copied.named_parameters()]
    for (name, a), (_, b) in zip(shared.named_parameters(), copied.named_parameters(), strict=True):
        assert torch.equal(a, b) and a.requires_grad == b.requires_grad, name
    images = random_images(2, size=48)
    got, want = shared.forward_tokens(images)[0], copied.forward_tokens(images)[0]
    torch.testing.assert_close(got.patches, want.patches, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.prefix, want.prefix, rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_timm, tiny_clip], ids=["timm", "open_clip"])
def test_shared_student_holds_only_the_unlocked_weights(make):
    base = make()
    student = Student(base, 4, train_grid=(4, 4))
    base_storage = {p.untyped_storage().data_ptr() for p in base.parameters()}
    trainable = {id(p) for _, p in student.trainable_named_parameters()}
    for name, param in student.named_parameters():
        owned = param.untyped_storage().data_ptr() not in base_storage
        assert owned == (id(param) in trainable), name  # new tensors are exactly the trainable ones
    new = [p for p in student.parameters() if p.untyped_storage().data_ptr() not in base_storage]
    unlocked = sum(p.numel() for _, p in student.trainable_named_parameters())
    assert sum(p.numel() for p in new) == unlocked < 0.9 * sum(p.numel() for p in base.parameters())
    assert _storage_bytes(student.parameters()) == _storage_bytes(base.parameters()) + 4 * unlocked - \
        _storage_bytes([p for p in base.parameters() if any(p is q for q in _replaced(base, student))])


def _replaced(base, student):
    """The base parameters the student has its own copies of (same name, other tensor)."""
    own = dict(student.vision.named_parameters())
    return [p for name, p in base.named_parameters() if name in own and own[name] is not p]


@pytest.mark.parametrize("make", [tiny_timm, tiny_clip], ids=["timm", "open_clip"])
def test_training_steps_match_the_copying_student_and_leave_the_base_untouched(make):
    images = TensorImageDataset(random_images(4))
    recipe = Recipe(epochs=10, batch_size=2, lr=1e-3, lr_end=1e-4, seed=0, views=3)
    options = RunOptions(progress=False, max_steps=3)
    runs = {}
    for share in (True, False):
        base = make()  # the same seed: identical bases
        before = {k: v.clone() for k, v in base.state_dict().items()}
        teacher = default_teacher(base)
        probe = random_images(1, seed=3)
        teacher_before = teacher(probe)
        student = Student(base, 4, train_grid=(4, 4), share_frozen=share)
        result = distill(teacher, student, images, recipe, options)
        assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # base never trained
        assert not any(m.training for m in base.modules())  # the teacher stayed in eval mode
        assert torch.equal(teacher(probe), teacher_before)  # the teacher is still the frozen original
        trained = dict(student.trainable_named_parameters())
        assert any(not torch.equal(value, student.initial_trainable[name]) for name, value in trained.items()
                   if name != "registers")  # the steps did train the unlocked weights
        runs[share] = (result.losses, trained)
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-6, abs=1e-6)
    for name, value in runs[True][1].items():
        torch.testing.assert_close(value, runs[False][1][name], rtol=0, atol=1e-6)


def test_train_mode_reaches_only_the_student_own_modules():
    base = tiny_clip()
    student = Student(base, 2).train()
    assert student.training and student.vision.blocks[-1].training and student.vision.visual.conv1.training
    assert not base.blocks[0].training and not student.vision.blocks[0].training  # shared, frozen: eval
    assert student.vision.blocks[0] is base.blocks[0] and student.vision.blocks[-1] is not base.blocks[-1]
    student.eval()
    assert not any(m.training for m in student.modules())


def test_loading_into_a_shared_weight_is_refused():
    base = tiny_timm()
    student = Student(base, 2)
    with pytest.raises(KeyError, match="frozen weights this student shares"):
        student.load_changed_state({"vision.model.blocks.0.attn.qkv.weight": torch.zeros(96, 32)})
    assert not torch.equal(base.blocks[0].attn.qkv.weight, torch.zeros(96, 32))


def test_a_non_float32_base_gets_a_full_float32_copy():
    base = tiny_timm().to(torch.bfloat16)
    student = Student(base, 2)
    assert student.shared_modules() == []
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(p.dtype == torch.bfloat16 for p in base.parameters())
    assert student.forward_tokens(random_images(1))[0].patches.dtype == torch.float32
