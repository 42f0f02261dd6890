"""Data-parallel analysis jobs: shard work items over ``torchrun`` ranks, merge results on rank 0.

Launched plainly, everything runs in one process (rank 0 of 1) and no process group is created.
Launched by ``torchrun --nproc_per_node N`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``), :func:`from_env` joins a ``gloo`` process group: gloo runs on CPUs, and the
analyses only exchange small Python objects (result rows, token lists), never large tensors, so
there is nothing for NCCL to speed up.

Sharding is round-robin (``items[rank::world]``): neighbouring items (e.g. schedules that differ in
one segment) cost about the same, so round-robin balances the load better than contiguous blocks.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch.distributed as torch_dist

__all__ = ["DistContext", "from_env", "single_process"]


@dataclass
class DistContext:
    """Where this process stands in a (possibly one-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # whether from_env created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints; the others only compute."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[Any]) -> list:
        """This rank's items: every ``world_size``-th item starting at ``rank`` (round-robin)."""
        return list(items[self.rank :: self.world_size])

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj`` in rank order (on every rank; one process: ``[obj]``)."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (e.g. a decision only rank 0 can make)."""
        if not self.distributed:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`from_env` created it."""
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self.owns_group = False

    def __enter__(self) -> "DistContext":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def single_process() -> DistContext:
    return DistContext()


def from_env(timeout_minutes: float = 120.0) -> DistContext:
    """The job's context: joins the torchrun process group (gloo) when ``WORLD_SIZE > 1``.

    An already initialized default group is reused (and left alone on close). The long default
    timeout is deliberate: ranks meet only at the end of a shard, which can take many minutes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if torch_dist.is_initialized():
        return DistContext(torch_dist.get_rank(), torch_dist.get_world_size(), owns_group=False)
    torch_dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(torch_dist.get_rank(), torch_dist.get_world_size(), owns_group=True)
