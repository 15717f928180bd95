"""A 2-process torchrun (gloo, CPU) distillation equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_core_fixtures import one_thread, random_images, tiny_timm  # noqa: F401

from phreg_core.data import TensorImageDataset
from phreg_core.recipe import Recipe, RunOptions
from phreg_core.student import Student
from phreg_core.teacher import default_teacher
from phreg_core.trainer import distill

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from test_core_fixtures import random_images, tiny_timm
    from test_core_distributed import make_teacher, make_images
    from phreg_core.data import TensorImageDataset
    from phreg_core.student import Student
    from phreg_core.recipe import Recipe, RunOptions
    from phreg_core.trainer import distill
    import torch.distributed as dist

    out, per_rank_batch = sys.argv[1], int(sys.argv[2])
    base = tiny_timm()
    student = Student(base, 2)
    recipe = Recipe(epochs=2, batch_size=per_rank_batch, lr=1e-3, lr_end=1e-4, views=3)
    options = RunOptions(progress=False, out_dir=out, checkpoint_every=2)
    result = distill(make_teacher(base), student, TensorImageDataset(make_images()), recipe, options,
                     base_name="tiny", base_weights_sha256="0" * 64)
    rank = int(__import__("os").environ["RANK"])
    state = {n: p.detach() for n, p in student.trainable_named_parameters()}
    torch.save(state, f"{out}/params_rank{rank}.pt")
    if rank == 0:
        print(json.dumps({"steps": result.steps, "skipped": result.skipped_batches, "losses": result.losses,
                          "images_seen": result.images_seen}))
""")


def make_images() -> torch.Tensor:
    images = random_images(8, seed=3)
    images[5] *= 1e4  # its teacher targets overflow the loss: that batch is skipped after the forward pass
    return images


def make_teacher(base):
    teacher = default_teacher(base)

    def overflowing(x):
        out = teacher(x)
        return out * 1e30 if x.abs().max() > 1e3 else out

    return overflowing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh Python processes importing torch + timm: ~20-40 s on 2 shared cores
def test_torchrun_two_processes_gloo_matches_single_process(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    tests_dir = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests_dir), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), str(tmp_path / "worker.py"), str(tmp_path / "ddp"), "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["steps"] == 4  # 8 images / (2 processes × 2) per epoch × 2 epochs
    assert report["skipped"] == 2  # the overflowing image's batch, once per epoch
    assert report["images_seen"] == 8
    rank0 = torch.load(tmp_path / "ddp" / "params_rank0.pt")
    rank1 = torch.load(tmp_path / "ddp" / "params_rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP keeps the replicas identical
    assert (tmp_path / "ddp" / "adapter.safetensors").exists() and (tmp_path / "ddp" / "adapter.json").exists()

    # one process with the same global batch (4) sees the same images per step: same parameters
    base = tiny_timm()
    student = Student(base, 2)
    recipe = Recipe(epochs=2, batch_size=4, lr=1e-3, lr_end=1e-4, views=3)
    single = distill(make_teacher(base), student, TensorImageDataset(make_images()), recipe,
                     RunOptions(progress=False))
    assert single.skipped_batches == 2
    finite = [a for a in single.losses if a == a]
    assert len(finite) == 2
    ddp_finite = [a for a in report["losses"] if a == a]
    assert all(abs(a - b) < 1e-5 for a, b in zip(finite, ddp_finite, strict=True))
    for name, value in student.trainable_named_parameters():
        assert torch.allclose(value.detach(), rank0[name], atol=1e-5), name
