"""torchrun in one place: join the process group, slice the global batch, leave together.

Every trainer draws its data order and noise for the whole global (micro-)batch on every rank
and keeps its own rows, so the result does not depend on the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nanodiffusion.io.device import pick_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This rank's rows of a global batch of n (n divides by the world size)."""
        per_rank = n // self.world
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """Join the process group that torchrun describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        return Dist(), device
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def leave_together(d: Dist) -> None:
    """Wait for every rank, then destroy the process group: a rank that exits while rank 0 still
    writes its last files (the final sample grid) can make gloo abort the others."""
    if d.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def any_rank(flags: list[bool], d: Dist, device: torch.device) -> list[bool]:
    """Each flag, True on every rank if it is True on any (a Ctrl-C seen by one process stops all)."""
    value = torch.tensor([float(f) for f in flags], device=device)  # NCCL reduces GPU tensors only
    if d.world > 1:
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return [bool(v) for v in value.tolist()]
