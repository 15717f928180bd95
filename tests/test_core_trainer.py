"""The distillation trainer: learning, frozen weights, exact resume, skipped batches, schedule, cache, log."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_train import distill_args
from test_core_fixtures import one_thread, random_images, tiny_clip, tiny_timm  # noqa: F401

from phreg_core.data import TensorImageDataset
from phreg_core.recipe import EpochExponentialLR
from phreg_core.student import Student
from phreg_core.teacher import default_teacher
from phreg_core.trainer import distill


def quick_config(tmp_path=None, **overrides) -> dict:
    values = dict(epochs=100, batch_size=2, lr=1e-3, lr_end=1e-4, progress=False, seed=0,
                  base_name="tiny", base_weights_sha256="0" * 64)
    if tmp_path is not None:
        values["out_dir"] = str(tmp_path)
    values.update(overrides)
    return distill_args(**values)


def frozen_differences(base, student: Student) -> tuple[set[str], set[str]]:
    """Parameter/buffer names (relative to the adapter) whose value differs from the base; the unlocked names."""
    base_state = dict(base.named_parameters()) | dict(base.named_buffers())
    own_state = dict(student.vision.named_parameters()) | dict(student.vision.named_buffers())
    assert own_state.keys() == base_state.keys()
    changed = {name for name, value in own_state.items()
               if value.shape != base_state[name].shape or not torch.equal(value, base_state[name])}
    unlocked = {n.removeprefix("vision.") for n, _ in student.trainable_named_parameters()}
    return changed, unlocked


@pytest.mark.parametrize("make", [tiny_timm, tiny_clip], ids=["timm", "open_clip"])
def test_50_steps_halve_the_loss_and_only_unlocked_weights_change(make):
    torch.manual_seed(0)
    base = make()
    student = Student(base, 4, train_grid=(4, 4))
    result = distill(default_teacher(base), student, TensorImageDataset(random_images(8)),
                     **quick_config(max_steps=50))
    assert result.steps == 50 and result.skipped_batches == 0
    last = sum(result.losses[-5:]) / 5
    print(f"{make.__name__}: first loss {result.first_loss:.4f}, mean of last 5 {last:.4f}")
    assert last <= 0.5 * result.first_loss
    changed, unlocked = frozen_differences(base, student)
    assert changed, "nothing was trained"
    assert changed <= unlocked, sorted(changed - unlocked)


def test_lr_decays_per_epoch_exponentially_and_clamps():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
    rate = EpochExponentialLR(optimizer, 3e-4, 1e-5, 100).rate
    assert rate(0) == pytest.approx(3e-4 * (1e-5 / 3e-4) ** (1 / 100))
    assert rate(49) == pytest.approx(3e-4 * (1e-5 / 3e-4) ** 0.5)
    assert rate(99) == pytest.approx(1e-5)
    assert rate(150) == pytest.approx(1e-5)  # clamped at the end value


def test_lr_is_constant_within_an_epoch_with_per_epoch_updates(tmp_path):
    base = tiny_timm()
    distill(default_teacher(base), Student(base, 2), TensorImageDataset(random_images(6)),
            **quick_config(tmp_path, epochs=2, log_every=1, views=2, lr_update="per-epoch"))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 0, 0, 1, 1, 1]
    lrs = [r["lr"] for r in records]
    assert lrs[0] == lrs[2] == pytest.approx(1e-3 * (0.1 ** 0.5)) and lrs[3] == lrs[5] == pytest.approx(1e-4)


def trainable(student: Student) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in student.trainable_named_parameters()}


def test_resume_n_plus_n_equals_2n_straight(tmp_path):
    images = TensorImageDataset(random_images(6))  # 3 steps per epoch: the resume lands mid-epoch
    n = 4

    def run(out, max_steps, resume=False):
        torch.manual_seed(123)
        base = tiny_timm()
        student = Student(base, 2)
        config = quick_config(out, epochs=4, max_steps=max_steps, resume=resume, checkpoint_every=100, views=4)
        result = distill(default_teacher(base), student, images, **config)
        return student, result

    straight, straight_result = run(tmp_path / "straight", 2 * n)
    run(tmp_path / "split", n)
    resumed, resumed_result = run(tmp_path / "split", 2 * n, resume=True)
    assert resumed_result.steps == 2 * n and len(resumed_result.losses) == n
    assert resumed_result.losses == straight_result.losses[n:]
    a, b = trainable(straight), trainable(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert log == sorted(set(log))  # no step logged twice


def test_existing_run_is_not_overwritten_and_resume_checks_settings(tmp_path):
    base = tiny_timm()
    images = TensorImageDataset(random_images(2))
    distill(default_teacher(base), Student(base, 2), images, **quick_config(tmp_path, max_steps=1, views=2))
    with pytest.raises(FileExistsError, match="--resume"):
        distill(default_teacher(base), Student(base, 2), images, **quick_config(tmp_path, max_steps=2, views=2))
    with pytest.raises(ValueError, match="views"):
        distill(default_teacher(base), Student(base, 2), images,
                **quick_config(tmp_path, max_steps=2, views=3, resume=True))


def test_nan_batches_are_skipped_and_counted():
    images = random_images(4)
    images[1, 0, 0, 0] = float("nan")
    base = tiny_timm()
    student = Student(base, 2)
    result = distill(default_teacher(base), student, TensorImageDataset(images),
                     **quick_config(epochs=1, batch_size=1, shuffle=False, views=2))
    assert result.steps == 4 and result.skipped_batches == 1
    assert all(torch.isfinite(p).all() for _, p in student.trainable_named_parameters())


class CountingTeacher(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.inner(x)


def test_target_cache_reuses_targets_across_epochs(tmp_path):
    base = tiny_timm()
    teacher = CountingTeacher(default_teacher(base))
    config = quick_config(epochs=3, views=3, cache_targets=str(tmp_path / "cache"), teacher_id={"t": "tiny"})
    result = distill(teacher, Student(base, 2), TensorImageDataset(random_images(4)), **config)
    assert teacher.images == 4 * 3  # only the first epoch ran the teacher (4 images × 3 views)
    assert (result.cache_misses, result.cache_hits) == (4, 8)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 4
    # a different teacher identity is a different key: nothing is reused
    teacher2 = CountingTeacher(default_teacher(base))
    config2 = quick_config(epochs=1, views=3, cache_targets=str(tmp_path / "cache"), teacher_id={"t": "other"})
    distill(teacher2, Student(base, 2), TensorImageDataset(random_images(4)), **config2)
    assert teacher2.images == 4 * 3


def test_cache_needs_a_teacher_identity(tmp_path):
    base = tiny_timm()
    with pytest.raises(ValueError, match="teacher_id"):
        distill(lambda x: default_teacher(base)(x), Student(base, 2), TensorImageDataset(random_images(2)),
                **quick_config(epochs=1, cache_targets=str(tmp_path)))


def test_cache_refuses_a_dataset_with_per_epoch_crops_and_leaves_it_alone(tmp_path):
    base = tiny_timm()
    data = TensorImageDataset(random_images(2))
    data.fixed_crops = False  # a dataset whose crops change every epoch
    with pytest.raises(ValueError, match="fixed_crops=True"):
        distill(default_teacher(base), Student(base, 2), data,
                **quick_config(epochs=1, cache_targets=str(tmp_path), teacher_id={"t": "tiny"}))
    assert data.fixed_crops is False
