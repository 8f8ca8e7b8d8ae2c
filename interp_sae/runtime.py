"""Where code runs: the device, the `torchrun` process group, and the dtype names.

One module for all three so that harvest, training and inspection pick devices, join process
groups and spell dtypes the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from interp_sae.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
"""Every dtype name interp-sae writes to a file or takes on the command line."""


def torch_dtype(name: str) -> torch.dtype:
    """`"bfloat16"` → torch.bfloat16 (also accepts `"torch.bfloat16"`)."""
    try:
        return DTYPES[name.removeprefix("torch.")]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 → `"bfloat16"`."""
    for name, known in DTYPES.items():
        if known == dtype:
            return name
    raise ConfigError(f"dtype {dtype} has no name in interp-sae's files; use one of {sorted(DTYPES)}")


def launched_world_size() -> int:
    """How many processes `torchrun` started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` = cuda when present, else cpu. Under torchrun a bare `cuda` is this process's GPU
    (its LOCAL_RANK), so every rank works on its own device."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N ({error})") from None
    if resolved.type == "cuda" and resolved.index is None and launched_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return resolved


@dataclass(frozen=True)
class Cluster:
    """This process's place among the processes `torchrun` started (rank 0 of 1 without it)."""

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


def join_cluster(device: torch.device) -> Cluster:
    """The process group torchrun set up (NCCL on GPUs, gloo on CPU), joined if needed."""
    if launched_world_size() == 1:
        return Cluster()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Cluster(rank=dist.get_rank(), world_size=dist.get_world_size())
