"""The distributed helpers the model, data and engine need (no-ops on one process).

    device = init_from_environment()   # torchrun's RANK/WORLD_SIZE, or a multi-task SLURM job
    num_pos = reduce_mean(count)       # normalisers: the mean over ranks
    images = pad_to_common_size(images)  # the padding a single process would give the batch

A process joins a process group when it is told its rank: by ``torchrun``
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or,
in a multi-task submitit job on SLURM, by :func:`rendezvous_env`, which derives
the same variables from submitit's ``JobEnvironment``. The backend is NCCL on
CUDA and gloo on a CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import zlib
from collections.abc import Mapping
from typing import Protocol

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)
# MASTER_PORT of a SLURM job, when the job does not set one: a function of the job id
# in this range, so that every task of the job (and a requeued start) finds the same one.
PORT_RANGE = (20_000, 60_000)
# A rank that waits this long for the others in a collective gives up with an error
# (instead of hanging until the job's time limit).
TIMEOUT = datetime.timedelta(minutes=30)


def is_distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch_dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


# --------------------------------------------------------------------------- joining


class JobEnvironment(Protocol):
    """What :func:`rendezvous_env` reads from ``submitit.JobEnvironment()``."""

    job_id: str
    global_rank: int
    local_rank: int
    num_tasks: int
    num_nodes: int
    hostnames: list[str]


def rendezvous_env(job: JobEnvironment, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables of torch's ``env://`` rendezvous for one task of a job.

    Ranks come from submitit's job environment; the master is the allocation's first
    node; ``MASTER_PORT`` is the job's own (``environ``) or a number derived from the
    job id (the same in every task, and again after a requeue).
    """
    port = environ.get("MASTER_PORT")
    if not port:
        low, high = PORT_RANGE
        port = str(low + zlib.crc32(str(job.job_id).encode()) % (high - low))
    return {
        "MASTER_ADDR": job.hostnames[0],
        "MASTER_PORT": port,
        "RANK": str(job.global_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_RANK": str(job.local_rank),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // max(job.num_nodes, 1)),
    }


def _multi_task_slurm_job() -> bool:
    return (
        os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    )


def init_from_environment() -> torch.device:
    """Join the process group the environment describes, if any; return this rank's device.

    ``RANK`` set (torchrun, even with one process) or a multi-task submitit job on
    SLURM: the process joins a group (NCCL on CUDA, gloo otherwise). Otherwise
    it runs alone. The device is ``cuda:LOCAL_RANK`` where CUDA is available.
    """
    if "RANK" not in os.environ and _multi_task_slurm_job():
        import submitit

        os.environ.update(rendezvous_env(submitit.JobEnvironment(), os.environ))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    if "RANK" in os.environ and not is_distributed():
        backend = "nccl" if cuda else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://", timeout=TIMEOUT)
        log.info("joined a %s process group: rank %d of %d", backend, rank(), world_size())
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


# --------------------------------------------------------------------------- collectives


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of a tensor over all processes (the tensor itself on one process), detached.

    Loss normalisers use it: each rank divides its *sum* by the mean count, and DDP
    averages the gradients, which gives the gradient of (sum over ranks) / (total count)
    as one process computes it on the whole batch.
    """
    if not is_distributed():
        return value
    value = value.detach().clone()
    torch_dist.all_reduce(value)
    return value / world_size()


def pad_to_common_size(images: Tensor) -> Tensor:
    """Zero-pad a [B, 3, H, W] batch (bottom/right) to the largest H and W over all ranks.

    Each rank collates its share of the global batch to the size of its own images;
    one process would pad the whole batch to the largest. Padded locations take part
    in the classification loss (as background), so without this two ranks would not
    compute one process's loss.
    """
    if not is_distributed():
        return images
    size = torch.tensor(images.shape[-2:], device=images.device)
    torch_dist.all_reduce(size, op=torch_dist.ReduceOp.MAX)
    height, width = (int(v) for v in size)
    return F.pad(images, (0, width - images.shape[-1], 0, height - images.shape[-2]))


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
