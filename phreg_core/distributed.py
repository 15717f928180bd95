"""Process-group setup for ``torchrun`` (DDP): NCCL on CUDA, gloo on CPU. A single process needs nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "all_mean", "all_sum_int", "all_true", "barrier", "setup", "teardown"]


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this module initialised the process group (and tears it down)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group if ``WORLD_SIZE > 1``; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_mean(env: DistEnv, value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (a copy; the input is untouched)."""
    out = value.detach().clone().float()
    if env.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= env.world_size
    return out


def all_true(env: DistEnv, flag: bool) -> bool:
    """True only if ``flag`` holds on every process (so all of them take the same branch)."""
    if not env.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0.5)


def all_sum_int(env: DistEnv, value: int) -> int:
    """Sum of an integer over processes."""
    if not env.distributed:
        return int(value)
    total = torch.tensor([float(value)], device=env.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return int(round(total.item()))
