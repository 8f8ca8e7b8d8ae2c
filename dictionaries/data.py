"""Where the trainer's batches come from: the `BatchSource` protocol and an in-memory source.

The activation store implements the same protocol, so the trainer never knows which it reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from interp_sae.errors import ConfigError


@runtime_checkable
class BatchSource(Protocol):
    """A finite, re-playable stream of activation batches.

    - `d`: the activation width.
    - optionally `batch_size`: vectors per batch, from which the trainer knows the run's length in
      tokens (settings such as AuxK's dead window follow it; without it they keep their defaults).
    - `num_batches(epoch)`: how many batches `batches(epoch)` yields.
    - `batches(epoch, start)`: float tensors [B, d] (any device; the trainer moves them, so
      pinned CPU memory lets the copy overlap). The order must be a deterministic function of
      `epoch` (and the source's own seed), and `start` must skip the first `start` batches
      without reading them: resume restarts from (epoch, batch index).
    """

    d: int

    def num_batches(self, epoch: int) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]: ...


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys (e.g. run seed and epoch), so that streams
    for different purposes never share a seed."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


class TensorBatchSource:
    """Batches of an in-memory tensor [N, d], reshuffled each epoch with a seeded permutation.

    The last partial batch is dropped (every step sees `batch_size` vectors, as the schedule
    and throughput assume) unless `drop_last=False`. `shuffle=False` keeps the stored order
    (held-out evaluation).
    """

    def __init__(
        self, data: torch.Tensor, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True
    ) -> None:
        if data.ndim != 2:
            raise ConfigError(f"data must be [N, d], got shape {tuple(data.shape)}")
        if batch_size < 1 or (drop_last and data.shape[0] < batch_size):
            raise ConfigError(f"batch_size {batch_size} does not fit {data.shape[0]} vectors")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.d = data.shape[1]

    def num_batches(self, epoch: int) -> int:
        n = self.data.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        n = self.data.shape[0]
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator).to(self.data.device)
        else:
            order = torch.arange(n, device=self.data.device)
        for i in range(start, self.num_batches(epoch)):
            yield self.data[order[i * self.batch_size : (i + 1) * self.batch_size]]


def within_norm(x: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """The rows of `x` [B, d] not longer than `max_norm`, in order (all of them for None); rows
    whose norm is NaN stay, so that whatever reads them still sees them."""
    return x if max_norm is None else x[within_norm_mask(x, max_norm)]


def within_norm_mask(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """[B] bool: the rows of `x` [B, d] that `within_norm` keeps."""
    return ~(x.norm(dim=-1) > max_norm)


class NormCappedSource:
    """`source` without its vectors longer than `max_norm`: the same batches, each shorter by the
    vectors it drops (the trainer's evaluation view under `TrainConfig.max_norm_ratio`)."""

    def __init__(self, source: BatchSource, max_norm: float) -> None:
        self.source, self.max_norm, self.d = source, max_norm, source.d

    def num_batches(self, epoch: int) -> int:
        return self.source.num_batches(epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        for batch in self.source.batches(epoch, start):
            yield within_norm(batch, self.max_norm)


def train_test_split(
    data: torch.Tensor, test_fraction: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, test) split of the rows of `data` (the authors held out 10 %)."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed)).to(data.device)
    n_test = max(1, round(test_fraction * data.shape[0]))
    return data[order[n_test:]], data[order[:n_test]]


def take_vectors(source: BatchSource, n: int, epoch: int = 0) -> torch.Tensor:
    """The first `n` vectors (or all, if fewer) of one epoch of `source`, as one tensor."""
    parts, count = [], 0
    for batch in source.batches(epoch):
        parts.append(batch[: n - count])
        count += parts[-1].shape[0]
        if count >= n:
            break
    if not parts:
        raise ConfigError("the batch source yielded no batches")
    return torch.cat(parts)
