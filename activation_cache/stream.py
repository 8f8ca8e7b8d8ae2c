"""Activations straight from the model into training batches, with no store in between.

`ActivationStream` reads the training documents of a corpus (the "train" side of the same
document-level `Split` a store uses), packs them into BOS-started rows, runs the model over
``forward_rows`` rows at a time (one pass for every hook) and mixes the document tokens' vectors
in a bounded shuffle buffer per hook; its batches are dicts ``hook → float32 [B, d]``, which the
trainer reads like any other source (`train(..., inputs=...)`).

The buffer (``capacity`` vectors per hook, on the training device, in ``buffer_dtype``): fill it,
permute it with a seeded generator, hand out batches from its front until half of it is left
(all of it once the budget is read), move the rest to the front, refill, permute again. Memory
stays at ``capacity + forward_rows × context_length`` vectors per hook however many tokens the
run trains on (the permutation briefly copies the filled part once more).

Resume, exact by construction: `state_dict` holds the packer state after the last row read, the
number of vectors admitted, the generator's state and the buffer's unconsumed vectors (with the
document id and position of each). A stream restored from it yields exactly the batches an
uninterrupted one would have yielded next, so no token is trained on twice and none is skipped.
The price is checkpoint size: up to the buffer's bytes (``capacity × d × 2`` per hook in bfloat16)
on top of the dictionaries'. Each pass over the corpus (an epoch) reads the same documents again
and mixes them with a generator seeded by (seed, epoch).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from interp_sae.errors import ConfigError

from .corpus import CorpusSpec
from .harvest import _forward, model_rows
from .models import LanguageModel
from .packing import pack_blocks, prefetched
from .reader import Split
from .store_format import PackerState


@dataclass(frozen=True)
class StreamPlan:
    """What a stream reads: the corpus, the rows, which documents, and how many vectors."""

    corpus: CorpusSpec
    hooks: list[str]
    context_length: int
    split: Split
    side: str = "train"
    rank: int = 0
    world_size: int = 1

    def keeps(self, doc_index: int) -> bool:
        """Whether document `doc_index` belongs to this stream: its split side, and its rank's share."""
        on_side = bool(self.split.mask(np.array([doc_index], dtype=np.int64), self.side)[0])
        return on_side and doc_index % self.world_size == self.rank


def packed_rows(lm: LanguageModel, plan: StreamPlan, start: PackerState = PackerState()):
    """Rows (token ids, doc ids, doc positions, state after) of the plan's documents, from `start`."""
    return model_rows(lm, plan.corpus, plan.context_length, start, plan.keeps)


def count_document_tokens(lm: LanguageModel, plan: StreamPlan, limit: int) -> tuple[int, bool]:
    """(document tokens the plan's rows hold, up to `limit`; whether the corpus ended first).
    Tokenises without running the model, so a short corpus is known before any long work."""
    count = 0
    for _, doc_ids, _, _ in packed_rows(lm, plan):
        count += int((doc_ids >= 0).sum())
        if count >= limit:
            return limit, False
    return count, True


@dataclass
class RowBlock:
    """A few packed rows and the hooks' vectors at their document tokens (in row order)."""

    token_ids: torch.Tensor  # int64 [rows, ctx]
    doc_ids: torch.Tensor  # int64 [rows, ctx], -1 off documents
    doc_positions: torch.Tensor  # int32 [rows, ctx]
    vectors: dict[str, torch.Tensor]  # hook → [document tokens, d]
    end_state: PackerState


def forward_blocks(
    lm: LanguageModel, plan: StreamPlan, rows_per_pass: int, stop: int | None, start: PackerState = PackerState()
) -> Iterator[RowBlock]:
    """The plan's rows, `rows_per_pass` at a time, with the vectors of their document tokens."""
    # Tokenising and packing the next rows overlap this pass, as in the harvest.
    for block in prefetched(pack_blocks(packed_rows(lm, plan, start), rows_per_pass)):
        token_ids = torch.from_numpy(block.token_ids).long()
        doc_ids = torch.from_numpy(block.doc_ids)
        on_documents = (doc_ids >= 0).view(-1).to(lm.device)
        acts = _forward(lm, token_ids.to(lm.device), plan.hooks, stop)
        yield RowBlock(
            token_ids=token_ids,
            doc_ids=doc_ids,
            doc_positions=torch.from_numpy(block.doc_positions),
            vectors={h: a.reshape(-1, a.shape[-1])[on_documents] for h, a in acts.items()},
            end_state=block.end_state,
        )


class ActivationStream:
    """Keyed training batches computed on the fly; see the module docstring.

    ``vectors_per_epoch`` document tokens are trained on per epoch, a whole number of batches
    (the caller counts what the corpus holds first: `count_document_tokens`). After each batch,
    `last_origin` holds the (document id, position) of each of its vectors.

    Under torchrun each rank streams its own documents (the plan's rank and world size) and its
    batches are its share of the step (``per_rank_batches``); its state is padded to a fixed
    shape so the trainer can gather every rank's into one checkpoint.
    """

    per_rank_batches = True

    def __init__(
        self,
        lm: LanguageModel,
        plan: StreamPlan,
        *,
        widths: dict[str, int],
        stop: int | None,
        batch_size: int,
        vectors_per_epoch: int,
        capacity: int,
        rows_per_pass: int,
        seed: int,
        device: torch.device,
        buffer_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        if capacity < batch_size:
            raise ConfigError(
                f"the shuffle buffer holds {capacity:,} vectors, fewer than one batch of {batch_size:,}; "
                "raise --buffer or lower --batch-size"
            )
        if vectors_per_epoch < batch_size or vectors_per_epoch % batch_size:
            raise ConfigError(f"vectors_per_epoch {vectors_per_epoch} must be a positive multiple of {batch_size}")
        self.lm, self.plan, self.widths, self.stop = lm, plan, widths, stop
        self.batch_size, self.vectors_per_epoch, self.capacity = batch_size, vectors_per_epoch, capacity
        self.rows_per_pass, self.seed, self.device, self.buffer_dtype = rows_per_pass, seed, device, buffer_dtype
        room = capacity + rows_per_pass * plan.context_length  # one pass may overshoot the capacity
        self.buffers = {h: torch.empty((room, d), dtype=buffer_dtype, device=device) for h, d in widths.items()}
        self.origins = torch.empty((room, 2), dtype=torch.int64)  # (document id, position) of each slot
        self.last_origin = torch.empty((0, 2), dtype=torch.int64)
        self._sample: dict[str, torch.Tensor] | None = None
        self._restored: int | None = None  # batches into the epoch of a state loaded by load_state_dict
        self._reset(0)

    @property
    def d(self) -> dict[str, int]:
        return self.widths

    def num_batches(self, epoch: int = 0) -> int:
        return self.vectors_per_epoch // self.batch_size

    def view(self, hook: str) -> HookView:
        return HookView(self, hook)

    # -- the state machine ------------------------------------------------------------
    def _reset(self, epoch: int) -> None:
        self.epoch, self.emitted = epoch, 0
        self.packer, self.admitted = PackerState(), 0
        self.filled = self.head = self.emit_left = 0
        seed = np.random.default_rng([self.seed, epoch, self.plan.rank]).integers(2**62)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._blocks: Iterator[RowBlock] | None = None

    def _refill(self) -> None:
        """Move the unconsumed vectors to the front, read passes until the buffer is full (or the
        budget is read), permute, and decide how many batches to hand out before the next refill."""
        keep = slice(self.head, self.filled)
        for buffer in self.buffers.values():
            buffer[: keep.stop - keep.start] = buffer[keep].clone()
        self.origins[: keep.stop - keep.start] = self.origins[keep].clone()
        self.filled, self.head = keep.stop - keep.start, 0
        budget_read = self.admitted >= self.vectors_per_epoch
        while self.filled < self.capacity and not budget_read:
            if self._blocks is None:
                self._blocks = forward_blocks(self.lm, self.plan, self.rows_per_pass, self.stop, self.packer)
            block = next(self._blocks, None)
            if block is None:
                raise ConfigError(
                    f"the corpus ended after {self.admitted:,} of the {self.vectors_per_epoch:,} tokens counted "
                    "before training: did it change during the run?"
                )
            take = min(self.vectors_per_epoch - self.admitted, len(next(iter(block.vectors.values()))))
            span = slice(self.filled, self.filled + take)
            for hook, vectors in block.vectors.items():
                self.buffers[hook][span] = vectors[:take].to(self.buffer_dtype)
            on_documents = block.doc_ids >= 0
            self.origins[span, 0] = block.doc_ids[on_documents][:take]
            self.origins[span, 1] = block.doc_positions[on_documents][:take].long()
            self.filled, self.admitted, self.packer = span.stop, self.admitted + take, block.end_state
            budget_read = self.admitted >= self.vectors_per_epoch
        order = torch.randperm(self.filled, generator=self.generator)
        on_device = order.to(self.device)
        for buffer in self.buffers.values():
            buffer[: self.filled] = buffer[on_device]
        self.origins[: self.filled] = self.origins[order]
        if budget_read:
            self.emit_left = self.filled // self.batch_size  # the budget is whole batches: nothing is left
        else:
            self.emit_left = max(1, (self.filled - self.capacity // 2) // self.batch_size)

    def _next_batch(self) -> dict[str, torch.Tensor]:
        if self.emit_left == 0:
            self._refill()
        span = slice(self.head, self.head + self.batch_size)
        self.head, self.emit_left, self.emitted = span.stop, self.emit_left - 1, self.emitted + 1
        self.last_origin = self.origins[span].clone()
        return {hook: buffer[span].float() for hook, buffer in self.buffers.items()}

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches `start` … of `epoch`: from the beginning, or from a state `load_state_dict` restored."""
        if start == 0 and self._restored != 0:
            self._reset(epoch)
        elif (epoch, start) != (self.epoch, self._restored):
            raise ConfigError(
                f"the stream can start epoch {epoch} at batch 0, or where its restored state stands "
                f"(epoch {self.epoch}, batch {self._restored}), not at batch {start}"
            )
        self._restored = None
        while self.emitted < self.num_batches(epoch):
            yield self._next_batch()

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able state) that `load_state_dict` continues from exactly."""
        # Under torchrun every rank's tensors must have one shape: the whole buffer, unconsumed part first.
        count = self.filled - self.head
        pending = slice(self.head, self.filled if self.plan.world_size == 1 else self.head + len(self.origins))
        tensors = {f"buffer/{hook}": _padded(buffer, pending).cpu() for hook, buffer in self.buffers.items()}
        tensors["origins"] = _padded(self.origins, pending)
        tensors["generator"] = self.generator.get_state()
        state = {
            "pending": count,
            "epoch": self.epoch,
            "emitted": self.emitted,
            "emit_left": self.emit_left,
            "admitted": self.admitted,
            "packer": {"doc": self.packer.doc, "offset": self.packer.offset},
        }
        return tensors, state

    def load_state_dict(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        self._reset(int(state["epoch"]))
        self.emitted, self.emit_left, self.admitted = (
            int(state["emitted"]),
            int(state["emit_left"]),
            int(state["admitted"]),
        )
        self.packer = PackerState(doc=int(state["packer"]["doc"]), offset=int(state["packer"]["offset"]))
        self.filled = int(state["pending"])
        for hook, buffer in self.buffers.items():
            buffer[: self.filled] = tensors[f"buffer/{hook}"][: self.filled].to(self.device, self.buffer_dtype)
        self.origins[: self.filled] = tensors["origins"][: self.filled]
        self.generator.set_state(tensors["generator"])
        self._restored = self.emitted

    # -- the preparation sample -----------------------------------------------------------
    def sample_vectors(self, n: int) -> dict[str, torch.Tensor]:
        """The first `n` training vectors of each hook in corpus order, of all ranks' documents
        (one forward over them, computed once): what the trainer estimates input scales and WSAE
        weights from, the same on every rank."""
        if self._sample is None:
            parts: dict[str, list[torch.Tensor]] = {hook: [] for hook in self.widths}
            have = 0
            every_rank = dataclasses.replace(self.plan, rank=0, world_size=1)  # the same sample on every rank
            for block in forward_blocks(self.lm, every_rank, self.rows_per_pass, self.stop):
                for hook, vectors in block.vectors.items():
                    parts[hook].append(vectors[: n - have].to(self.buffer_dtype))
                have += len(parts[self.plan.hooks[0]][-1])
                if have >= n:
                    break
            self._sample = {hook: torch.cat(chunks) for hook, chunks in parts.items()}
        return self._sample


def _padded(tensor: torch.Tensor, span: slice) -> torch.Tensor:
    """tensor[span], with zero rows after the tensor's end so it always has span's length."""
    part = tensor[span]
    missing = (span.stop - span.start) - len(part)
    return torch.cat([part, part.new_zeros((missing, *part.shape[1:]))]) if missing else part.clone()


class HookView:
    """One hook's batches of an `ActivationStream` (the trainer's `BatchSource` protocol)."""

    def __init__(self, stream: ActivationStream, hook: str) -> None:
        self.stream, self.hook = stream, hook
        self.d, self.batch_size = stream.widths[hook], stream.batch_size

    def num_batches(self, epoch: int = 0) -> int:
        return self.stream.num_batches(epoch)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[torch.Tensor]:
        for batch in self.stream.batches(epoch, start):
            yield batch[self.hook]

    def sample_vectors(self, n: int) -> torch.Tensor:
        return self.stream.sample_vectors(n)[self.hook]


@dataclass
class HeldOut:
    """The held-out documents' side of an on-the-fly run, in memory: vectors to evaluate on and
    rows to measure the loss recovered on."""

    vectors: dict[str, torch.Tensor]  # hook → [n, d] on the CPU
    token_ids: torch.Tensor  # int64 [rows, ctx]
    doc_mask: torch.Tensor  # bool [rows, ctx]: document tokens
    doc_ids: torch.Tensor  # int64 [n]: the document of each vector


def held_out_set(
    lm: LanguageModel,
    plan: StreamPlan,
    rows_per_pass: int,
    stop: int | None,
    max_vectors: int,
    max_rows: int,
    dtype: torch.dtype = torch.bfloat16,
) -> HeldOut:
    """The first `max_vectors` vectors and `max_rows` rows of the plan's (held-out) documents:
    bounded whatever the corpus size. Raises ConfigError when the split holds none of its documents."""
    vectors: dict[str, list[torch.Tensor]] = {hook: [] for hook in plan.hooks}
    rows: list[RowBlock] = []
    doc_ids: list[torch.Tensor] = []
    have = kept_rows = 0
    for block in forward_blocks(lm, plan, rows_per_pass, stop):
        if kept_rows < max_rows:
            rows.append(block)
            kept_rows += len(block.token_ids)
        if have < max_vectors:
            for hook, block_vectors in block.vectors.items():
                vectors[hook].append(block_vectors[: max_vectors - have].to("cpu", dtype))
            doc_ids.append(block.doc_ids[block.doc_ids >= 0][: max_vectors - have])
            have += len(doc_ids[-1])
        if have >= max_vectors and kept_rows >= max_rows:
            break
    if not doc_ids:
        raise ConfigError(
            f"none of the corpus's documents falls on the {plan.side} side of the split (val_fraction "
            f"{plan.split.val_fraction}, seed {plan.split.seed}): raise --val-fraction, or use a corpus of more "
            "documents. A local .txt file is one document: split a long text into a folder of .txt files or a "
            ".jsonl file with one document per line."
        )
    return HeldOut(
        vectors={hook: torch.cat(parts) for hook, parts in vectors.items()},
        token_ids=torch.cat([b.token_ids for b in rows])[:max_rows],
        doc_mask=torch.cat([b.doc_ids >= 0 for b in rows])[:max_rows],
        doc_ids=torch.cat(doc_ids),
    )
