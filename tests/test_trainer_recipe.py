"""Training-recipe parity with the released PH-Reg trainer: the learning rate each optimiser step runs at, the
dropped last partial batch, and exact resume under both."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_train import distill_args
from test_core_fixtures import one_thread, random_images, tiny_timm  # noqa: F401
from torch.optim.optimizer import register_optimizer_step_pre_hook

from phreg_core.data import TensorImageDataset
from phreg_core.recipe import RecipeError
from phreg_core.student import Student
from phreg_core.teacher import default_teacher
from phreg_core.trainer import distill

LR, LR_END = 1e-3, 1e-4


def config(out=None, **overrides) -> dict:
    values = dict(epochs=4, batch_size=2, lr=LR, lr_end=LR_END, progress=False, seed=0, views=2,
                  base_name="tiny", base_weights_sha256="0" * 64, checkpoint_every=100)
    if out is not None:
        values["out_dir"] = str(out)
    values.update(overrides)
    return distill_args(**values)


def released_schedule(num_images: int, batch_size: int, num_epochs: int, lr: float, end_lr: float,
                      skipped: frozenset[tuple[int, int]] = frozenset()) -> list[float]:
    """The rate of every optimiser step of the released loop, transcribed literally.

    0raiser0/PH-Reg DINOv2_full/distill_main.py (and the CLIP student's script) train_model_distill:
    DataLoader(drop_last=True); in the batch loop a NaN batch does `continue` before `optimizer.step()`;
    after each `optimizer.step()`: new_lr = lr * decay_ratio ** ((epoch+1)/num_epochs), clamped at end_lr,
    written to every param_group. `skipped` holds the (epoch, i) batches that `continue`.
    """
    used = []
    current = lr  # AdamW([... 'lr': args_dict['lr'] ...])
    decay_ratio = end_lr / lr
    batches = num_images // batch_size  # len(DataLoader(..., drop_last=True))
    for epoch in range(num_epochs):
        for i in range(batches):
            if (epoch, i) in skipped:
                continue
            used.append(current)  # optimizer.step() runs at the group's current lr
            new_lr = lr * (decay_ratio ** ((epoch + 1) / num_epochs))
            if new_lr <= end_lr:
                new_lr = end_lr
            current = new_lr  # for param_group in optimizer.param_groups: param_group['lr'] = new_lr
    return used


class StepRates:
    """The learning rate of every optimiser step, read by a global optimiser step pre-hook."""

    def __enter__(self):
        self.rates: list[float] = []
        self.handle = register_optimizer_step_pre_hook(
            lambda optimizer, args, kwargs: self.rates.append(optimizer.param_groups[0]["lr"]))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def train(images, cfg: dict, seed: int = 123):
    torch.manual_seed(seed)
    base = tiny_timm()
    student = Student(base, 2)
    with StepRates() as rates:
        result = distill(default_teacher(base), student, TensorImageDataset(images), **cfg)
    return student, result, rates.rates


def test_step_rates_equal_the_released_loop():
    images = random_images(7)  # 7 images, batch 2: 3 full batches per epoch, the 7th image is dropped
    _, result, rates = train(images, config())
    expected = released_schedule(7, 2, 4, LR, LR_END)
    assert len(expected) == 12 and result.steps == 12 and result.images_seen == 24
    assert rates == expected  # exact floats: step 1 at lr0, each epoch's first step at the previous rate
    assert rates[0] == LR and rates[3] == rates[2] != rates[4]


def test_a_skipped_batch_leaves_the_rate_unchanged_as_released():
    images = random_images(6)
    images[0, 0, 0, 0] = float("nan")  # with shuffle off, batch 0 of every epoch is skipped
    _, result, rates = train(images, config(epochs=3, shuffle=False))
    skipped = frozenset((epoch, 0) for epoch in range(3))
    assert result.skipped_batches == 3
    assert rates == released_schedule(6, 2, 3, LR, LR_END, skipped)


def test_per_epoch_option_runs_each_epoch_at_its_own_rate(tmp_path):
    _, result, rates = train(random_images(6), config(tmp_path, epochs=3, lr_update="per-epoch", log_every=1))
    per_epoch = [LR * (LR_END / LR) ** ((e + 1) / 3) for e in range(3)]
    assert rates == pytest.approx([per_epoch[e] for e in range(3) for _ in range(3)], rel=1e-12)
    logged = [json.loads(line)["lr"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert logged == rates  # the log records the rate each step ran at


def test_drop_last_matches_the_released_loader_and_can_be_turned_off():
    _, dropped, _ = train(random_images(5), config(epochs=2))
    assert (dropped.steps, dropped.images_seen) == (4, 8)  # len(DataLoader(range(5), 2, drop_last=True)) == 2
    _, kept, _ = train(random_images(5), config(epochs=2, drop_last=False))
    assert (kept.steps, kept.images_seen) == (6, 10)


def test_fewer_images_than_a_batch_is_an_error_naming_the_batch_size():
    with pytest.raises(RecipeError, match=r"3 training images make no full batch of 4.*--batch-size"):
        train(random_images(3), config(batch_size=4))


def trainable(student: Student) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in student.trainable_named_parameters()}


@pytest.mark.parametrize("first", [3, 4])  # resume exactly at an epoch boundary, and mid-epoch
def test_resume_is_bit_identical_with_the_released_schedule(tmp_path, first):
    images = random_images(7)
    straight, straight_result, straight_rates = train(images, config(tmp_path / "a", max_steps=8))
    train(images, config(tmp_path / "b", max_steps=first))
    resumed, resumed_result, resumed_rates = train(images, config(tmp_path / "b", max_steps=8, resume=True))
    assert resumed_result.steps == 8 and resumed_result.losses == straight_result.losses[first:]
    assert resumed_rates == straight_rates[first:]
    a, b = trainable(straight), trainable(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
