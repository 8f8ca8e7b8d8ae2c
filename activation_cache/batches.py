"""Shuffled training batches from a store, with memory bounded however large the store is.

Each epoch permutes the shard order, groups shards into windows of about ``window_bytes``,
and yields each window's vectors in a fresh random order. Over an epoch every selected vector
is yielded exactly once. A store that fits in one window is shuffled globally; a larger one
mixes vectors across ``window_bytes`` worth of randomly chosen shards at a time.

Everything is a function of ``(seed, epoch)``, so ``batches(epoch, start=k)`` resumes at
batch ``k`` without reading the activations of the windows it skips.

The data path, in as few copies as the hardware allows: a reader thread gathers one hook's
selected vectors straight from the memory-mapped shards into one window buffer in the store
dtype (bf16: half of float32's bytes; float8_e4m3: a quarter, plus one float32 scale per
vector), while the trainer consumes the window before it. On CUDA the buffer is pinned and
copied to the GPU on a stream of its own, ``prefetch`` windows ahead, so the copy overlaps the
training step; each batch is then a gather from the window on the device and is widened
(decoded, `EncodedVectors.decode`) to float32 there.

This class implements the trainer's ``BatchSource`` protocol (``d``, ``num_batches``,
``batches``).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from interp_sae.errors import ConfigError
from interp_sae.runtime import resolve_device

from .reader import ActivationStore, Split
from .vector_codec import EncodedVectors, gatherable

_Buffers = list[EncodedVectors | None]


@dataclass
class _Window:
    vectors: EncodedVectors  # [n, d] as stored (with scales in a scaled store), on the batch device
    order: torch.Tensor  # int64 [n] permutation, on the batch device


class ShuffledBatches:
    def __init__(
        self,
        store: ActivationStore,
        hook: str,
        batch_size: int,
        *,
        side: str = "train",
        split: Split | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        include_special: bool = False,
        window_bytes: int = 1 << 30,
        prefetch: int | None = None,
    ):
        if batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {batch_size}")
        self.store, self.hook, self.batch_size = store, hook, batch_size
        self.d = store.d(hook)
        self.side, self.split, self.include_special = side, split or Split(), include_special
        self.seed = seed
        self.device = resolve_device(device)
        self.prefetch = prefetch if prefetch is not None else (2 if self.device.type == "cuda" else 1)
        shard_bytes = store.manifest.shard_rows * store.context_length * store.vector_bytes(hook)
        self.window_shards = max(1, window_bytes // max(1, shard_bytes))
        # One buffer per window in flight (the one being consumed and those read ahead), reused from
        # window to window and epoch to epoch: a fresh gigabyte costs a page fault per 4 KiB, and a
        # fresh pinned one far more. A `batches` call takes the set and gives it back when it ends;
        # one running beside it (an evaluation that stopped early, say) gets a set of its own.
        self._spare_buffers: list[_Buffers] = []
        self._spare_lock = threading.Lock()

    # -- sizes -------------------------------------------------------------------------
    @cached_property
    def shard_counts(self) -> np.ndarray:
        """Selected vectors per shard (reads only the small document-id arrays)."""
        return np.array(
            [len(self._selection(i)) for i in range(self.store.num_shards)],
            dtype=np.int64,
        )

    def __len__(self) -> int:
        return int(self.shard_counts.sum())

    def num_batches(self, epoch: int = 0) -> int:
        return math.ceil(len(self) / self.batch_size)

    def _selection(self, shard: int) -> torch.Tensor:
        return torch.from_numpy(self.store.selection(shard, self.side, self.split, self.include_special))

    # -- iteration -----------------------------------------------------------------------
    def _windows(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.store.num_shards).tolist()
        return [order[i : i + self.window_shards] for i in range(0, len(order), self.window_shards)]

    def _buffer(self, buffers: _Buffers, slot: int, size: int) -> EncodedVectors:
        """buffers[slot], grown to hold at least `size` vectors (pinned on CUDA)."""
        buffer = buffers[slot]
        if buffer is None or len(buffer) < size:
            pin = self.device.type == "cuda"
            values = torch.empty((size, self.d), dtype=self.store.dtype, pin_memory=pin)
            scale = torch.empty(size, dtype=torch.float32, pin_memory=pin) if self.store.scaled else None
            buffer = buffers[slot] = EncodedVectors(values, scale)
        return buffer.head(size)

    def _load_window(self, epoch: int, number: int, shards: list[int], buffers: _Buffers, slot: int) -> _Window:
        """Gather the window's selected vectors from the memory maps into buffers[slot] and draw
        its order; on CUDA, also upload it on the reader's own stream."""
        cuda = self.device.type == "cuda"
        size = int(self.shard_counts[shards].sum())
        buffer = self._buffer(buffers, slot, size)
        at = 0
        for shard in shards:
            local = self._selection(shard)
            stored = self.store.encoded(shard, self.hook)
            torch.index_select(gatherable(stored.values), 0, local, out=gatherable(buffer.values[at : at + len(local)]))
            if stored.scale is not None and buffer.scale is not None:
                torch.index_select(stored.scale, 0, local, out=buffer.scale[at : at + len(local)])
            at += len(local)
        seed = int(np.random.default_rng([self.seed, epoch, number]).integers(2**62))
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
        if not cuda:
            return _Window(buffer, order)
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            window = _Window(buffer.to(self.device, non_blocking=True), order.to(self.device, non_blocking=True))
        stream.synchronize()  # waits in the reader thread, not the trainer's; then the pinned buffer is free again
        return window

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
        with self._spare_lock:
            buffers: _Buffers = self._spare_buffers.pop() if self._spare_buffers else [None] * (self.prefetch + 1)
        try:
            yield from self._batches_from(epoch, pending, skip, buffers)
        finally:
            with self._spare_lock:
                self._spare_buffers.append(buffers)

    def _batches_from(
        self, epoch: int, pending: list[tuple[int, list[int]]], skip: int, buffers: _Buffers
    ) -> Iterator[torch.Tensor]:
        parts: list[EncodedVectors] = []  # the start of a batch that spans two windows
        have = 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="window-reader") as pool:
            ahead: deque[Future[_Window]] = deque()
            for i in range(len(pending)):
                # Windows i … i + prefetch are in flight, so window j can reuse window j − prefetch − 1's
                # buffer: that one has been consumed (its batches are copies).
                while len(ahead) <= self.prefetch and i + len(ahead) < len(pending):
                    j = i + len(ahead)
                    ahead.append(pool.submit(self._load_window, epoch, *pending[j], buffers, j % len(buffers)))
                window = ahead.popleft().result()
                if self.device.type == "cuda":  # uploaded on the reader's stream, used on the trainer's
                    for tensor in (*window.vectors.tensors(), window.order):
                        tensor.record_stream(torch.cuda.current_stream(self.device))
                position, skip = skip, 0
                while position < len(window.order):
                    take = min(self.batch_size - have, len(window.order) - position)
                    parts.append(window.vectors.select(window.order[position : position + take]))
                    position, have = position + take, have + take
                    if have == self.batch_size:
                        yield self._widen(parts)
                        parts, have = [], 0
        if parts:
            yield self._widen(parts)

    def _widen(self, parts: list[EncodedVectors]) -> torch.Tensor:
        return EncodedVectors.cat(parts).to(self.device).decode()
