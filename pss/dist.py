"""The few distributed helpers the model and engine need (no-ops on one process)."""

from __future__ import annotations

import torch.distributed as torch_dist
from torch import Tensor


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of a tensor over all processes (the tensor itself on one process)."""
    if not is_distributed():
        return value
    value = value.detach().clone()
    torch_dist.all_reduce(value)
    return value / world_size()


def barrier() -> None:
    if is_distributed():
        torch_dist.barrier()


def broadcast_object(obj):
    """rank 0's ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every process ([obj] on one process)."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    torch_dist.all_gather_object(out, obj)
    return out
