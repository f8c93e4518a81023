"""Data parallelism: process-group setup from `torchrun`'s environment, and the few collectives the trainer needs.

One process per device. Under `torchrun --nproc_per_node R` each process reads RANK / WORLD_SIZE / LOCAL_RANK
from its environment; a plain `python` run is rank 0 of 1 and never touches `torch.distributed`. The backend
is NCCL on GPUs and Gloo on CPUs. Every rank draws different micro-batches (see `BatchSource`), DDP averages
gradients, and only rank 0 writes logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

# A rank that waits this long for the others has lost them (a crash elsewhere); fail instead of hanging forever.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def pick_device(preference: str, local_rank: int) -> torch.device:
    """'auto' = this rank's GPU when there is one, else the CPU; 'cpu' / 'cuda' force it."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(preference)


def init_distributed(
    device: str = "auto", rank: int | None = None, world_size: int | None = None
) -> DistributedContext:
    """The context of this process; joins the process group when there is more than one rank.

    `rank` / `world_size` override the environment (for `torch.multiprocessing` launches, which also need
    MASTER_ADDR / MASTER_PORT set).
    """
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    chosen = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def shutdown_distributed(context: DistributedContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_context(device: str, given: DistributedContext | None = None) -> Iterator[DistributedContext]:
    """`given` as it is (whoever made it shuts it down: a test running several stages in one process group), or
    this process's own context, joined here and shut down on the way out, also when training fails."""
    if given is not None:
        yield given
        return
    context = init_distributed(device)
    try:
        yield context
    finally:
        shutdown_distributed(context)


def all_reduce_sum(values: list[float], context: DistributedContext) -> list[float]:
    """Element-wise sum over ranks (float64, so token counts stay exact)."""
    if not context.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(context))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def broadcast_from_main(values: list[float], context: DistributedContext) -> list[float]:
    """Rank 0's values on every rank: decisions that depend on wall-clock time must be taken once."""
    if not context.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(context))
    dist.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()


def _collective_device(context: DistributedContext) -> torch.device:
    # NCCL only moves GPU tensors; Gloo only CPU ones.
    return context.device if context.device.type == "cuda" else torch.device("cpu")
