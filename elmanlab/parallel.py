"""Data parallel under ``torchrun`` (``WORLD_SIZE`` > 1; the facts come from
:func:`elmanlab.hardware.dist_info`): the process group (NCCL on GPU, gloo on CPU), the DDP wrapper,
and the two things the ranks agree on each step: the loss (their mean) and whether a time budget is
spent (rank 0 decides). ``batch_size`` is the global batch; rank r trains on rows
``[r * B / W, (r + 1) * B / W)`` of the same global batch, and only rank 0 writes.
"""
from __future__ import annotations

import contextlib

import torch


def init(device: torch.device) -> None:
    """Join the process group (unless already in one), on ``device``."""
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DDP: its gradients averaged over the ranks in backward."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def mean_loss(stats: torch.Tensor, world: int) -> torch.Tensor:
    """[loss, gradient norm] with the loss averaged over the ranks (the norm is already the same)."""
    import torch.distributed as dist
    loss_t = stats[:1].clone()
    dist.all_reduce(loss_t)
    return torch.cat([loss_t / world, stats[1:]])


def rank0_says(flag: bool, is_main: bool, device: torch.device) -> bool:
    """Rank 0's ``flag``, on every rank."""
    import torch.distributed as dist
    t = torch.tensor([1.0 if (flag and is_main) else 0.0], device=device)
    dist.all_reduce(t)
    return t.item() > 0


def close() -> None:
    """Leave the process group (after a barrier, so that no rank leaves while another still works)."""
    import torch.distributed as dist
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()
