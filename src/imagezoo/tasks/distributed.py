"""One process or many: the same training code under ``python`` and under ``torchrun``.

``torchrun --nproc_per_node=N`` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address;
when they are present a process group is started (gloo on CPU, NCCL on GPUs) and the
trainable module is wrapped in DistributedDataParallel. Without them everything here is a
no-op, so a single process pays nothing.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .classify import resolve_device


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    started_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Distributed":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls(device=resolve_device(device))
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        chosen = resolve_device(device)
        if chosen.type == "cuda":
            chosen = torch.device("cuda", local_rank)
            torch.cuda.set_device(chosen)
        started = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
            started = True
        if chosen.type == "cpu":
            # N processes share the machine's cores: give each its share of threads.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
        return cls(rank, world_size, chosen, started)

    def __enter__(self) -> "Distributed":
        return self

    def __exit__(self, *exc) -> None:
        if self.started_here and dist.is_initialized():
            # The DistributedDataParallel wrapper sits in reference cycles that keep the gloo
            # group alive; collect it first, so that destroying the group joins gloo's worker
            # threads now. A gloo thread still alive during interpreter shutdown can release
            # the last collective's tensors there and abort the process ("terminate called
            # without an active exception"; seen under load, see pytorch/pytorch#179291).
            gc.collect()
            dist.destroy_process_group()

    def wrap(self, module: nn.Module) -> nn.Module:
        if not self.active:
            return module
        return DistributedDataParallel(module, device_ids=[self.device] if self.device.type == "cuda" else None)

    def sum(self, *values: float) -> tuple:
        """Element-wise sum over processes (local figures when alone)."""
        if not self.active:
            return values
        # On the process's own device: an NCCL group has no CPU backend.
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tuple(v.item() for v in tensor)

    def gather_lists(self, items: list) -> list:
        """Every process's list, concatenated (the local list when alone)."""
        if not self.active:
            return items
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def is_torchrun_worker() -> bool:
    """Whether this process is one of several started by ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "TORCHELASTIC_RUN_ID" in os.environ
