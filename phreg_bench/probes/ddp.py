"""Training a probe head data-parallel under ``torchrun`` (DDP) with the protocol's *global* batch.

How the batch splits. The protocol's ``batch_size`` B is the global batch (what one process would use);
each step, the same B rows are drawn on every rank (same seed) and rank ``r`` of ``W`` takes its contiguous
part of them (``numpy.array_split`` of the batch's loss groups: B / W images when W divides B, otherwise
some ranks take one group more). The number of iterations is the protocol's ``iters`` on every rank, so
the schedule (lr, beta1, warm-up) is unchanged. The depth loss is computed per group of
``loss_group_size`` images (the reference's 2 images per GPU); groups never straddle ranks.

Why the result matches one process. Each rank's loss is scaled so that DDP's *average* of the gradients is
the gradient of the single-process loss: ``local_sum * W / global_count`` (pixels for the segmentation
cross-entropy, which averages over every pixel of the batch; valid groups for the depth loss, counted over
all ranks). BatchNorm in the head uses the statistics of the global batch (``nn.SyncBatchNorm`` on CUDA;
on CPU, where it refuses to run, :class:`GlobalBatchNorm2d`), so its output and running statistics are those
of one process. What differs is only the order of floating-point sums (each rank sums its part, then the
all-reduce adds the parts): the trained head equals the single-process one to float32 rounding, measured
below 1e-5 relative on the test fixtures (tests/test_distributed_eval.py asserts ``rtol=1e-4``), and
metrics computed from it agree to that tolerance (segmentation, an argmax, is usually bit-identical).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from phreg_bench.protocol_settings import OVERRIDE_FLAG, ProtocolError
from phreg_core.distributed import DistEnv


def check_batch_split(batch_size: int, env: DistEnv, *, group: int = 1, task: str = "") -> None:
    """Refuse (before any work) a global batch that cannot give every rank at least one loss group."""
    if env.distributed and batch_size // group < env.world_size:
        raise ProtocolError(
            f"{OVERRIDE_FLAG} batch_size: {task} trains with a global batch of {batch_size} images (loss groups of "
            f"{group}), which cannot be split over {env.world_size} processes; run with at most "
            f"{batch_size // group} processes, or set a larger batch_size (part of the result identity)")


def local_part(rows: np.ndarray, env: DistEnv, *, group: int = 1) -> np.ndarray:
    """This rank's contiguous part of a global batch ``rows``, split at loss-group boundaries."""
    if not env.distributed:
        return rows
    groups = np.array_split(np.arange(-(-len(rows) // group)), env.world_size)[env.rank]
    if len(groups) == 0:
        return rows[:0]
    return rows[groups[0] * group:(groups[-1] + 1) * group]


def scale_to_global(loss: Tensor, local: int, total: int, env: DistEnv) -> Tensor:
    """``loss`` (a mean over ``local`` items) rescaled so DDP's gradient average equals the gradient of the
    mean over all ``total`` items of the global batch: ``loss * local * W / total``."""
    if not env.distributed:
        return loss
    return loss * (local * env.world_size / total)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch (all ranks), on any device.

    The sums travel through the autograd-aware ``torch.distributed.nn.functional.all_reduce``, so gradients
    flow to every rank's inputs as in one process. Two passes (mean, then centred squares) as the
    single-process kernel; the running variance is updated with the unbiased global variance, as PyTorch.
    Outside training, or in one process, it is plain ``BatchNorm2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        count = x.new_tensor([x.numel() / channels])
        totals = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean[None, :, None, None]
        var = all_reduce(centred.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp(min=1))
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def _sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            replacement = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats).to(device)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement)
        else:
            _sync_batchnorm(child, device)
    return module


def data_parallel(head: nn.Module, env: DistEnv) -> nn.Module:
    """``head`` with global-batch BatchNorm wrapped in ``DistributedDataParallel``; unchanged in one process.

    Evaluate with :func:`unwrap` (the evaluation is sharded and needs no gradient synchronisation).
    """
    if not env.distributed:
        return head
    head = _sync_batchnorm(head, env.device)
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(head, device_ids=device_ids)


def unwrap(head: nn.Module) -> nn.Module:
    return head.module if isinstance(head, nn.parallel.DistributedDataParallel) else head


def zero_loss(*outputs: Tensor) -> Tensor:
    """A zero that still reaches every parameter (a rank without a valid group must join DDP's all-reduce)."""
    return sum(o.sum() * 0.0 for o in outputs)
