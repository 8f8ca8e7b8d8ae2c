"""Data-parallel training under `torchrun`: one process per device, `torch.distributed` underneath.

Every rank draws the same global batch from its batch source and trains on its own slice of it
(`tensor_split` by rank); `DistributedDataParallel` averages the gradients, so with equal slices
a step equals the single-process step on the whole batch, within float tolerance. Rank 0
evaluates, logs, checkpoints and saves; the other ranks wait for it at barriers.

What differs from one process, by design: the VAE noise of each rank comes from its own
generator (so variational models see other noise draws), and buffers that a model updates
from its inputs (the TopK-aux dead-latent counters) follow rank 0's slice, since DDP
broadcasts rank 0's buffers every step. Each rank reads the whole global batch and keeps its
slice, which trades some duplicated reads for an exact match with single-process training.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's equal share of a global batch. A batch that does not split evenly (the short
        last one of an epoch) is trained whole on every rank: DDP averages equal-weight gradients,
        so uneven slices would not give the single-process step, and empty ones a NaN loss."""
        if not self.distributed or len(batch) % self.world_size:
            return batch
        return batch.tensor_split(self.world_size)[self.rank]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over ranks (every rank must call it)."""
        if not self.distributed:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.world_size

    def all_true(self, flag: torch.Tensor) -> bool:
        """True when `flag` is true on every rank (every rank must call it)."""
        if self.distributed:
            flag = flag.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def gather(self, tensor: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """Every rank's copy of an equally shaped tensor, on the CPU (every rank must call it)."""
        if not self.distributed:
            return [tensor]
        local = tensor.to(device)  # NCCL moves CUDA tensors only
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [p.cpu() for p in parts]

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        if not self.distributed:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def launched_world_size() -> int:
    """How many processes `torchrun` started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """Under torchrun, each process takes the GPU of its local rank."""
    if device.type == "cuda" and device.index is None and launched_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def join_cluster(device: torch.device) -> Cluster:
    """The process group torchrun set up (NCCL on GPUs, gloo on CPU), joined if needed."""
    if launched_world_size() == 1:
        return Cluster()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Cluster(rank=dist.get_rank(), world_size=dist.get_world_size())


class LossModule(nn.Module):
    """`forward` = the dictionary's training loss, so DDP (which hooks `forward`) can sync its gradients."""

    def __init__(self, dictionary: nn.Module) -> None:
        super().__init__()
        self.dictionary = dictionary

    def forward(self, x: torch.Tensor, generator: torch.Generator | None):
        return self.dictionary.loss(x, generator)
