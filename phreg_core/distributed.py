"""Process-group setup for ``torchrun`` (DDP): NCCL on CUDA, gloo on CPU. A single process needs nothing.

Besides setup, the collectives the benchmark's data-parallel evaluation needs, each a no-op (or the
identity) in a single process: exact sums (:func:`all_sum_`), variable-length gathers (:func:`all_gather_rows`),
rank 0's decision or bytes to every rank (:func:`broadcast_flag`, :func:`broadcast_bytes`) and the shard of a
dataset a rank evaluates (:func:`shard`). Nothing is pickled: every collective moves tensors.

Timeout: a collective that waits longer than ``PHREG_DIST_TIMEOUT_S`` seconds (default 1800, torch's gloo
default) raises instead of hanging; under ``torchrun`` the failing rank's exit then stops the whole group.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "all_gather_rows", "all_mean", "all_sum_", "all_sum_int", "all_true", "barrier",
           "broadcast_bytes", "broadcast_flag", "setup", "shard", "teardown", "timeout_s"]

DEFAULT_TIMEOUT_S = 1800.0  # torch's default for gloo process groups


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


def timeout_s() -> float:
    """Seconds a collective may wait (``PHREG_DIST_TIMEOUT_S``, default 1800); raises ``ValueError`` if not > 0."""
    raw = os.environ.get("PHREG_DIST_TIMEOUT_S", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"PHREG_DIST_TIMEOUT_S={raw!r}: must be a number of seconds > 0")
    return value


def setup(device: str = "auto") -> DistEnv:
    """Join the ``torchrun`` process group if ``WORLD_SIZE > 1``; pick this process's device.

    Under ``torchrun`` a CUDA device is ``cuda:LOCAL_RANK`` (NCCL), otherwise the CPU (gloo).
    """
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
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s()))
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


def shard(num_items: int, env: DistEnv) -> range:
    """The item indices this rank handles: ``rank, rank + world, ...`` (strided, so ranks get equal shares).

    Every index ``0 .. num_items - 1`` belongs to exactly one rank, whether or not ``world_size`` divides
    ``num_items``: no padding, so no item is counted twice (``torch.utils.data.DistributedSampler`` pads).
    """
    return range(env.rank, num_items, env.world_size)


def all_sum_(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (exact for integer dtypes) and return it (on its own device:
    it travels through ``env.device``, as NCCL needs CUDA tensors and gloo CPU ones)."""
    if env.distributed:
        moved = tensor.to(env.device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        if moved is not tensor:
            tensor.copy_(moved)
    return tensor


def all_gather_rows(env: DistEnv, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``rows`` ``[n_rank, *shape]`` (``n_rank`` may differ) in rank order, on
    ``env.device``.

    The values travel unchanged (no arithmetic), so an order-sensitive reduction done afterwards on the
    gathered rows (sorted by an index column) equals the single-process one bit for bit.
    """
    if not env.distributed:
        return rows
    rows = rows.to(env.device).contiguous()  # NCCL moves CUDA tensors, gloo CPU ones
    count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=env.device)
    counts = [torch.zeros_like(count) for _ in range(env.world_size)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    parts = [torch.zeros_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def broadcast_flag(env: DistEnv, flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (so all ranks take rank 0's branch)."""
    if not env.distributed:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=env.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def broadcast_bytes(env: DistEnv, data: bytes | None) -> bytes:
    """Rank 0's ``data`` on every rank (other ranks pass ``None``); a byte tensor, never a pickle."""
    if not env.distributed:
        return data or b""
    payload = torch.frombuffer(bytearray(data or b""), dtype=torch.uint8) if env.is_main and data else \
        torch.zeros(0, dtype=torch.uint8)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=env.device)
    dist.broadcast(size, src=0)
    buffer = payload.to(env.device) if env.is_main else torch.zeros(int(size.item()), dtype=torch.uint8,
                                                                     device=env.device)
    if int(size.item()):
        dist.broadcast(buffer, src=0)
    return bytes(buffer.cpu().numpy().tobytes())
