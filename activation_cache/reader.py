"""Reading a store: the one interface the rest of interp-sae reads activations through.

* `Split`: the document-level held-out split (fraction and seed), and which positions each side
  of it holds (`Split.mask`). A dictionary records the split it was trained with.
* `ActivationStore`: validation, per-shard access (`vectors`: zero-copy memory maps of one hook,
  decoded to float32 in a ``float8_e4m3`` store; `encoded`: the stored values and scales as they
  are, for a reader that decodes on its own device; `tokens`: token/document ids), `iter_split`
  (every selected vector of a split, shard by shard, with its global index), `rows` and `lookup`
  (tracing vectors back to their text), `verify`, and streaming `statistics`. Shuffled training
  batches live in ``batches.py``.

Every byte is checked before it is used: a tensor's xxh3 (format 2) or the shard's sha256
(format 1) the first time this process reads it; `verify` checks every shard's sha256.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .store_format import (
    DOC_IDS,
    DOC_POSITIONS,
    RESERVED_TENSORS,
    SAFETENSORS_DTYPES,
    TOKEN_IDS,
    TOKENIZER_DIR,
    Manifest,
    StoreFormatError,
    TensorSpan,
    read_manifest,
    safetensors_layout,
    tensor_checksum,
)
from .vector_codec import SCALE_SUFFIX, STORED_AS, EncodedVectors, is_scaled, scale_name

SIDES = ("train", "validation", "all")
_OPEN_MAPS = 256
_DTYPES_BY_NAME = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}


class ShardIntegrityError(StoreFormatError):
    """A shard on disk differs from what the manifest recorded."""


@dataclass(frozen=True)
class Split:
    """The held-out split of a store, by document: document `i` is held out when a fixed hash of
    (`i`, `seed`) falls below `val_fraction`, so no text is on both sides. Its sides are "train",
    "validation" and "all". BOS, separators and padding belong to no document and are left out
    unless asked for (then they follow the hash of their row)."""

    val_fraction: float = 0.1
    """Fraction of documents held out for evaluation (the VAEase authors' 90/10)."""
    seed: int = 0
    """Seed of the document hash: another seed holds out other documents."""

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction < 1:
            raise StoreFormatError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def mask(self, doc_ids: np.ndarray, side: str, include_special: bool = False) -> np.ndarray:
        """Which positions of `doc_ids` ([rows, ctx] or [n]) belong to `side`."""
        if side not in SIDES:
            raise StoreFormatError(f"split side must be one of {SIDES}, got {side!r}")
        special = doc_ids < 0
        if side == "all":
            return np.ones_like(special) if include_special else ~special
        keys = np.where(special, -1 - np.arange(doc_ids.shape[0])[:, None], doc_ids) if doc_ids.ndim == 2 else doc_ids
        in_val = _unit_hash(keys, self.seed) < self.val_fraction
        mask = in_val if side == "validation" else ~in_val
        return mask if include_special else mask & ~special

    def to_json(self) -> dict[str, Any]:
        return {"val_fraction": self.val_fraction, "split_seed": self.seed, "by": "document"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Split:
        return cls(val_fraction=float(data["val_fraction"]), seed=int(data["split_seed"]))


def _unit_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (key, seed) mapped to [0, 1): a fixed, platform-independent coin per key."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


@dataclass
class ShardTokens:
    """The token side of one shard, each array [rows, ctx]."""

    token_ids: np.ndarray  # int32
    doc_ids: np.ndarray  # int64, -1 for BOS, separator, padding
    doc_positions: np.ndarray  # int32, -1 likewise
    first_index: int  # global index of the shard's first vector


@dataclass
class SplitChunk:
    """One shard's selected vectors, from `ActivationStore.iter_split`."""

    shard: int
    vectors: torch.Tensor  # [n, d] in the store dtype; float32 (decoded) in a float8_e4m3 store
    indices: torch.Tensor  # int64 [n] global vector indices


@dataclass
class TokenRecord:
    """Where one stored vector came from."""

    index: int  # global vector index
    shard: int
    row: int  # global row
    position: int  # position in the row
    token_id: int
    doc_id: int  # -1 for BOS, separator, padding
    doc_position: int
    context_start: int  # row position of context_token_ids[0]
    context_token_ids: list[int]
    context_doc_ids: list[int]


@dataclass
class ActivationStats:
    count: int
    mean: torch.Tensor  # float64 [d]
    var: torch.Tensor  # float64 [d], population variance per dimension
    mean_norm: float  # mean L2 norm of the vectors

    def to_json(self) -> dict:
        return {"count": self.count, "mean": self.mean.tolist(), "var": self.var.tolist(), "mean_norm": self.mean_norm}


class _MappedShard:
    """A shard file mapped into memory (copy-on-write, so torch can view it without a copy)."""

    def __init__(self, path: Path):
        with open(path, "rb") as handle:
            self.size = handle.seek(0, 2)
            self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY) if self.size else None
        self.layout: dict[str, TensorSpan] = safetensors_layout(
            self.map[: min(self.size, 1 << 20)] if self.map else b""
        )
        if self.map is not None and any(s.end + 8 > self.size + 8 for s in self.layout.values()):
            raise StoreFormatError("a tensor reaches past the end of the file")

    def span(self, name: str) -> TensorSpan:
        if name not in self.layout:
            raise StoreFormatError(f"tensor {name!r} is missing")
        return self.layout[name]

    def bytes(self, name: str) -> memoryview:
        span = self.span(name)
        assert self.map is not None, "an empty file has no tensors"
        return memoryview(self.map)[span.start : span.end]

    def tensor(self, name: str) -> torch.Tensor:
        span = self.span(name)
        dtype = _DTYPES_BY_NAME[span.dtype]
        if span.end == span.start:
            return torch.empty(span.shape, dtype=dtype)
        flat = torch.frombuffer(self.map, dtype=dtype, count=(span.end - span.start) // dtype.itemsize,
                                offset=span.start)  # fmt: skip
        return flat.view(span.shape)


class ActivationStore:
    """A harvested store, opened read-only. ``ActivationStore(path)`` validates the manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest: Manifest = read_manifest(self.root)
        self._maps: OrderedDict[int, _MappedShard] = OrderedDict()
        self._checked: set[tuple[int, str]] = set()  # (shard, tensor) whose bytes this process checked
        self._lock = threading.Lock()

    # -- shape of the store ---------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    @property
    def hooks(self) -> list[str]:
        return [h.name for h in self.manifest.hooks]

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def dtype(self) -> torch.dtype:
        """The element dtype vectors are stored in (torch.float8_e4m3fn for ``float8_e4m3``)."""
        return STORED_AS[self.manifest.dtype]

    @property
    def scaled(self) -> bool:
        """Whether each vector is stored with a scale of its own (``float8_e4m3``)."""
        return is_scaled(self.dtype)

    def vector_bytes(self, hook: str) -> int:
        """Bytes one stored vector of `hook` takes, its scale included."""
        return self.d(hook) * self.dtype.itemsize + (4 if self.scaled else 0)

    @property
    def num_shards(self) -> int:
        return len(self.manifest.shards)

    def d(self, hook: str) -> int:
        return self.manifest.hook(hook).d

    def __len__(self) -> int:
        """Number of addressable vectors (every position, BOS and padding included)."""
        return self.manifest.tokens

    @cached_property
    def _shard_starts(self) -> np.ndarray:
        return np.array([s.first_row * self.context_length for s in self.manifest.shards], dtype=np.int64)

    def first_index(self, shard: int) -> int:
        return int(self._shard_starts[shard])

    def locate(self, index: int) -> tuple[int, int]:
        """Global vector index → (shard, index inside the shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"vector index {index} out of range: the store holds {len(self)} vectors")
        shard = int(np.searchsorted(self._shard_starts, index, side="right") - 1)
        return shard, index - int(self._shard_starts[shard])

    # -- shard access ---------------------------------------------------------------
    def vectors(self, shard: int, hook: str) -> torch.Tensor:
        """[rows × ctx, d] vectors of `hook` in shard `shard`, in the store dtype: a read-only view
        of the memory-mapped file (no copy; only the pages used are read), checked on first use.
        In a ``float8_e4m3`` store: the whole shard decoded to float32 (a copy; `encoded` avoids it)."""
        return self.encoded(shard, hook).readable()

    def encoded(self, shard: int, hook: str) -> EncodedVectors:
        """`hook`'s vectors in shard `shard` as stored: zero-copy views of the values and, in a
        scaled store, of their per-vector scales. `EncodedVectors.decode` widens them."""
        self.d(hook)  # a clear error for a hook the store does not hold
        scale = self._tensor(shard, scale_name(hook)) if self.scaled else None
        return EncodedVectors(self._tensor(shard, hook), scale)

    def tokens(self, shard: int) -> ShardTokens:
        """Token ids, document ids and document positions of a shard ([rows, ctx] each)."""
        arrays = {name: self._tensor(shard, name).numpy() for name in RESERVED_TENSORS}
        return ShardTokens(arrays[TOKEN_IDS], arrays[DOC_IDS], arrays[DOC_POSITIONS], self.first_index(shard))

    def selection(self, shard: int, side: str, split: Split, include_special: bool = False) -> np.ndarray:
        """Indices (inside the shard, ascending) of the vectors on `side` of `split`."""
        return np.flatnonzero(split.mask(self._tensor(shard, DOC_IDS).numpy(), side, include_special))

    def iter_split(self, hook: str, side: str, split: Split, *, include_special: bool = False) -> Iterator[SplitChunk]:
        """Every vector of `hook` on `side` of `split`, shard by shard in store order."""
        for shard in range(self.num_shards):
            local = torch.from_numpy(self.selection(shard, side, split, include_special))
            vectors = self.encoded(shard, hook).select(local).readable()
            yield SplitChunk(shard, vectors, local + self.first_index(shard))

    def rows(self, side: str, split: Split, max_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(token ids, document-token mask, side mask), each [rows, ctx], of the first `max_rows`
        rows that hold tokens of `side`."""
        ids, docs, masks, taken = [], [], [], 0
        for shard in range(self.num_shards):
            if taken >= max_rows:
                break
            tokens = self.tokens(shard)
            mask = split.mask(tokens.doc_ids, side)
            keep = np.flatnonzero(mask.any(1))[: max_rows - taken]
            ids.append(tokens.token_ids[keep])
            docs.append(tokens.doc_ids[keep] >= 0)
            masks.append(mask[keep])
            taken += len(keep)
        if taken == 0:
            raise StoreFormatError(f"the {side!r} side of {self.root}'s split holds no tokens")
        return np.concatenate(ids), np.concatenate(docs), np.concatenate(masks)

    def _mapped(self, shard: int) -> _MappedShard:
        with self._lock:
            if shard not in self._maps:
                record = self.manifest.shards[shard]
                try:
                    mapped = _MappedShard(self.root / record.file)
                except OSError as exc:
                    raise self._damaged(shard, f"missing or unreadable ({exc.strerror})") from exc
                except StoreFormatError as exc:
                    raise self._damaged(shard, f"unreadable ({exc})") from exc
                if mapped.size != record.bytes:
                    raise self._damaged(shard, f"size {mapped.size} bytes, expected {record.bytes} (truncated?)")
                self._maps[shard] = mapped
                if len(self._maps) > _OPEN_MAPS:  # each map holds a file descriptor; views keep theirs alive
                    self._maps.popitem(last=False)
            self._maps.move_to_end(shard)
            return self._maps[shard]

    def _tensor(self, shard: int, name: str) -> torch.Tensor:
        mapped = self._mapped(shard)
        try:
            tensor = mapped.tensor(name)
        except (StoreFormatError, KeyError) as exc:
            raise self._damaged(shard, f"unreadable ({exc})") from exc
        self._check_shape(shard, name, tuple(tensor.shape))
        key = (shard, name)
        if key not in self._checked:
            self._check_bytes(shard, name, mapped)
            with self._lock:
                self._checked.add(key)
        return tensor

    def _check_bytes(self, shard: int, name: str, mapped: _MappedShard) -> None:
        record = self.manifest.shards[shard]
        if record.checksums:  # format 2: this tensor's bytes only
            expected = record.checksums.get(name)
            actual = tensor_checksum(mapped.bytes(name))
            if actual != expected:
                raise self._damaged(shard, f"checksum mismatch in {name!r} (xxh3 {actual}, expected {expected})")
        elif (shard, "") not in self._checked:  # format 1: the whole file's sha256, once
            digest = hashlib.sha256(mapped.map or b"").hexdigest()
            if digest != record.sha256:
                raise self._damaged(shard, f"checksum mismatch (sha256 {digest[:12]}…, expected {record.sha256[:12]}…)")
            with self._lock:
                self._checked.add((shard, ""))

    def _check_shape(self, shard: int, name: str, shape: tuple[int, ...]) -> None:
        rows, ctx = self.manifest.shards[shard].rows, self.context_length
        if name in RESERVED_TENSORS:
            expected: tuple[int, ...] = (rows, ctx)
        elif self.scaled and name.endswith(SCALE_SUFFIX):
            self.d(name.removesuffix(SCALE_SUFFIX))  # the scales of a hook the store holds
            expected = (rows * ctx,)
        else:
            expected = (rows * ctx, self.d(name))
        if shape != expected:
            raise self._damaged(shard, f"tensor {name!r} has shape {shape}, expected {expected}")

    def _damaged(self, shard: int, problem: str) -> ShardIntegrityError:
        return ShardIntegrityError(
            f"shard {shard} ({self.root / self.manifest.shards[shard].file}) is damaged: {problem}. "
            "Rerun the harvest command with --repair to re-harvest only the damaged shards."
        )

    def shard_problem(self, shard: int) -> str | None:
        """Why shard `shard` cannot be trusted (size, sha256 of the whole file, tensor shapes), or
        None if it is intact. Always reads the file anew (what `verify` and `--repair` use)."""
        record = self.manifest.shards[shard]
        try:
            try:
                payload = (self.root / record.file).read_bytes()
            except OSError as exc:
                raise self._damaged(shard, f"missing or unreadable ({exc.strerror})") from exc
            if len(payload) != record.bytes:
                raise self._damaged(shard, f"size {len(payload)} bytes, expected {record.bytes} (truncated?)")
            digest = hashlib.sha256(payload).hexdigest()
            if digest != record.sha256:
                raise self._damaged(shard, f"checksum mismatch (sha256 {digest[:12]}…, expected {record.sha256[:12]}…)")
            try:
                layout = safetensors_layout(payload)
            except StoreFormatError as exc:
                raise self._damaged(shard, f"unreadable ({exc})") from exc
            for name, span in layout.items():
                self._check_shape(shard, name, span.shape)
        except ShardIntegrityError as exc:
            return str(exc)
        return None

    def verify(self) -> list[str]:
        """Check every shard. Returns the problems found (empty when the store is intact)."""
        problems = (self.shard_problem(i) for i in range(self.num_shards))
        return [p for p in problems if p is not None]

    # -- tracing ---------------------------------------------------------------------
    def lookup(self, index: int, window: int = 16) -> TokenRecord:
        """Trace a vector to its token, document and position, with `window` tokens either side
        (within its row: what the model saw)."""
        shard, local = self.locate(index)
        tokens = self.tokens(shard)
        row, pos = divmod(local, self.context_length)
        lo, hi = max(0, pos - window), min(self.context_length, pos + window + 1)
        return TokenRecord(
            index=index,
            shard=shard,
            row=self.manifest.shards[shard].first_row + row,
            position=pos,
            token_id=int(tokens.token_ids[row, pos]),
            doc_id=int(tokens.doc_ids[row, pos]),
            doc_position=int(tokens.doc_positions[row, pos]),
            context_start=lo,
            context_token_ids=tokens.token_ids[row, lo:hi].tolist(),
            context_doc_ids=tokens.doc_ids[row, lo:hi].tolist(),
        )

    def activations(self, hook: str, indices: list[int]) -> torch.Tensor:
        """float32 [len(indices), d] for arbitrary global indices (reads only those rows)."""
        out = torch.empty((len(indices), self.d(hook)), dtype=torch.float32)
        for i, index in enumerate(indices):
            shard, local = self.locate(index)
            out[i] = self.encoded(shard, hook).select(torch.tensor([local])).decode()[0]
        return out

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.root / TOKENIZER_DIR)

    # -- statistics ------------------------------------------------------------------
    def statistics(
        self, hook: str, side: str = "train", split: Split | None = None, include_special: bool = False
    ) -> ActivationStats:
        """Mean, per-dimension variance and mean norm in one streaming pass (float64, merged
        per shard with Chan's formula so large stores lose no precision)."""
        count, mean, m2, norm_sum = 0, torch.zeros(0), torch.zeros(0), 0.0
        for chunk in self.iter_split(hook, side, split or Split(), include_special=include_special):
            x = chunk.vectors.double()
            n = x.shape[0]
            if n == 0:
                continue
            shard_mean = x.mean(0)
            shard_m2 = ((x - shard_mean) ** 2).sum(0)
            norm_sum += float(x.norm(dim=1).sum())
            if count == 0:
                count, mean, m2 = n, shard_mean, shard_m2
            else:
                delta = shard_mean - mean
                total = count + n
                mean = mean + delta * (n / total)
                m2 = m2 + shard_m2 + delta**2 * (count * n / total)
                count = total
        if count == 0:
            raise StoreFormatError(f"the {side!r} side of {self.root}'s split holds no vectors")
        return ActivationStats(count=count, mean=mean, var=m2 / count, mean_norm=norm_sum / count)
