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

from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from interp_sae.runtime import Cluster


def wrap_for_cluster(module: nn.Module, cluster: Cluster, device: torch.device) -> nn.Module:
    """`module` wrapped in DistributedDataParallel when there are several ranks, else itself."""
    if not cluster.distributed:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


class LossModule(nn.Module):
    """`forward` = the dictionary's training loss, so DDP (which hooks `forward`) can sync its gradients."""

    def __init__(self, dictionary: nn.Module) -> None:
        super().__init__()
        self.dictionary: Any = dictionary  # a Dictionary; Any, since nn.Module's attributes type as Tensor | Module

    def forward(self, x: torch.Tensor, generator: torch.Generator | None):
        return self.dictionary.loss(x, generator)
