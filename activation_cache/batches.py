"""Shuffled training batches from a store, with memory bounded however large the store is.

Each epoch permutes the shard order, groups shards into windows of about ``window_bytes``,
and yields each window's vectors in a fresh random order; the next window is read in the
background meanwhile. Over an epoch every selected vector is yielded exactly once. A store
that fits in one window is shuffled globally; a larger one mixes vectors across
``window_bytes`` worth of randomly chosen shards at a time.

Everything is a function of ``(seed, epoch)``, so ``batches(epoch, start=k)`` resumes at
batch ``k`` without reading the activations of the windows it skips.

This class implements the trainer's ``BatchSource`` protocol (``d``, ``num_batches``,
``batches``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np
import torch

from .reader import ActivationStore, split_mask
from .store_format import DOC_IDS


class ShuffledBatches:
    def __init__(
        self,
        store: ActivationStore,
        hook: str,
        batch_size: int,
        *,
        split: str = "train",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        seed: int = 0,
        device: str | torch.device = "cpu",
        include_special: bool = False,
        window_bytes: int = 1 << 30,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.store, self.hook, self.batch_size = store, hook, batch_size
        self.d = store.d(hook)
        self.split, self.val_fraction, self.split_seed = split, val_fraction, split_seed
        self.seed, self.include_special = seed, include_special
        self.device = torch.device(device)
        itemsize = torch.finfo(getattr(torch, store.manifest.dtype)).bits // 8
        shard_bytes = store.manifest.shard_rows * store.context_length * self.d * itemsize
        self.window_shards = max(1, window_bytes // max(1, shard_bytes))

    # -- sizes -------------------------------------------------------------------------
    def _mask(self, doc_ids: np.ndarray) -> np.ndarray:
        return split_mask(doc_ids, self.split, self.val_fraction, self.split_seed, self.include_special).reshape(-1)

    @cached_property
    def shard_counts(self) -> np.ndarray:
        """Selected vectors per shard (reads only the small doc-id arrays)."""
        return np.array(
            [
                int(self._mask(self.store.token_arrays(i)[DOC_IDS]).sum())
                for i in range(len(self.store.manifest.shards))
            ],
            dtype=np.int64,
        )

    def __len__(self) -> int:
        return int(self.shard_counts.sum())

    def num_batches(self, epoch: int = 0) -> int:
        return math.ceil(len(self) / self.batch_size)

    # -- iteration -----------------------------------------------------------------------
    def _windows(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.store.manifest.shards)).tolist()
        return [order[i : i + self.window_shards] for i in range(0, len(order), self.window_shards)]

    def _load_window(self, epoch: int, number: int, shards: list[int]) -> torch.Tensor:
        """The window's selected vectors, in storage dtype, in this window's random order."""
        parts = []
        for shard in shards:
            tensors = self.store.load_shard(shard, [self.hook, DOC_IDS])
            parts.append(tensors[self.hook][torch.from_numpy(self._mask(tensors[DOC_IDS].numpy()))])
        vectors = torch.cat(parts)
        generator = torch.Generator().manual_seed(
            int(np.random.default_rng([self.seed, epoch, number]).integers(2**62))
        )
        return vectors[torch.randperm(len(vectors), generator=generator)]

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
        """float32 [batch_size, d] batches on ``device`` (the last one may be smaller)."""
        skip = start * self.batch_size
        pending: list[tuple[int, list[int]]] = []
        for number, shards in enumerate(self._windows(epoch)):
            size = int(self.shard_counts[shards].sum())
            if not pending and skip >= size:
                skip -= size  # a leading window wholly before batch `start`: never read
            else:
                pending.append((number, shards))
        carry = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-reader") as pool:
            future = pool.submit(self._load_window, epoch, *pending[0]) if pending else None
            for i in range(len(pending)):
                window = future.result()
                if i + 1 < len(pending):
                    future = pool.submit(self._load_window, epoch, *pending[i + 1])
                if skip:
                    window, skip = window[skip:], 0
                if carry is not None:
                    window = torch.cat([carry, window])
                full = len(window) // self.batch_size * self.batch_size
                for lo in range(0, full, self.batch_size):
                    yield self._to_device(window[lo : lo + self.batch_size])
                carry = window[full:] if full < len(window) else None
        if carry is not None:
            yield self._to_device(carry)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        # Move in storage dtype (half the bytes for bf16), widen on the device.
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device).float()
