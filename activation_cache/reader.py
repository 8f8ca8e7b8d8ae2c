"""Reading a store: validation, checksums, shard loading, tracing vectors back to their text,
and streaming statistics. Shuffled training batches live in ``batches.py``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load

from .store_format import (
    DOC_IDS,
    DOC_POSITIONS,
    RESERVED_TENSORS,
    TOKEN_IDS,
    TOKENIZER_DIR,
    Manifest,
    StoreFormatError,
    read_manifest,
)

SPLITS = ("train", "validation", "all")


class ShardIntegrityError(StoreFormatError):
    """A shard on disk differs from what the manifest recorded."""


def split_mask(
    doc_ids: np.ndarray, split: str, val_fraction: float, split_seed: int, include_special: bool = False
) -> np.ndarray:
    """Which positions belong to ``split``. Whole documents go to one side (no leakage between
    train and validation); BOS/separator/padding positions are excluded unless asked for, and
    then follow the split of their row index's hash."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    special = doc_ids < 0
    if split == "all":
        return np.ones_like(special) if include_special else ~special
    keys = np.where(special, -1 - np.arange(doc_ids.shape[0])[:, None], doc_ids) if doc_ids.ndim == 2 else doc_ids
    in_val = _unit_hash(keys, split_seed) < val_fraction
    mask = in_val if split == "validation" else ~in_val
    return mask if include_special else mask & ~special


def _unit_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (key, seed) mapped to [0, 1): a fixed, platform-independent coin per key."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53)


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


class ActivationStore:
    """A harvested store, opened read-only. ``ActivationStore(path)`` validates the manifest."""

    def __init__(self, root: str | Path, verify_reads: bool = True):
        self.root = Path(root)
        self.manifest: Manifest = read_manifest(self.root)
        self.verify_reads = verify_reads

    # -- shape of the store ---------------------------------------------------------
    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    @property
    def hooks(self) -> list[str]:
        return [h.name for h in self.manifest.hooks]

    def d(self, hook: str) -> int:
        return self.manifest.hook(hook).d

    def __len__(self) -> int:
        """Number of addressable vectors (every position, BOS and padding included)."""
        return self.manifest.tokens

    @cached_property
    def _shard_starts(self) -> np.ndarray:
        return np.array([s.first_row * self.context_length for s in self.manifest.shards], dtype=np.int64)

    def locate(self, index: int) -> tuple[int, int]:
        """Global vector index → (shard, index inside the shard)."""
        if not 0 <= index < len(self):
            raise IndexError(f"vector index {index} out of range: the store holds {len(self)} vectors")
        shard = int(np.searchsorted(self._shard_starts, index, side="right") - 1)
        return shard, index - int(self._shard_starts[shard])

    # -- shard access ---------------------------------------------------------------
    def load_shard(self, index: int, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Read a shard whole, checking its checksum (unless ``verify_reads`` is off) and shapes."""
        if self.verify_reads:
            payload = self._read_bytes(index)
            self._check_bytes(index, payload)
            try:
                tensors = safetensors_load(payload)
            except SafetensorError as exc:
                raise self._damaged(index, f"unreadable ({exc})") from exc
            if names is not None:
                tensors = {n: tensors[n] for n in names}
        else:
            tensors = self._read_tensors(index, names)
        self._check_shapes(index, tensors)
        return tensors

    def _read_tensors(self, index: int, names: list[str] | None) -> dict[str, torch.Tensor]:
        path = self.root / self.manifest.shards[index].file
        try:
            with safe_open(path, framework="pt") as handle:
                return {n: handle.get_tensor(n) for n in (names or handle.keys())}
        except (SafetensorError, OSError) as exc:
            raise self._damaged(index, f"unreadable ({exc})") from exc

    def _read_bytes(self, index: int) -> bytes:
        try:
            return (self.root / self.manifest.shards[index].file).read_bytes()
        except OSError as exc:
            raise self._damaged(index, f"missing or unreadable ({exc.strerror})") from exc

    def token_arrays(self, index: int) -> dict[str, np.ndarray]:
        """The shard's token ids, document ids and positions ([rows, ctx]); cheap, no activations."""
        tensors = self._read_tensors(index, list(RESERVED_TENSORS))
        self._check_shapes(index, tensors)
        return {k: v.numpy() for k, v in tensors.items()}

    def _check_bytes(self, index: int, payload: bytes) -> None:
        record = self.manifest.shards[index]
        if len(payload) != record.bytes:
            raise self._damaged(index, f"size {len(payload)} bytes, expected {record.bytes} (truncated?)")
        digest = hashlib.sha256(payload).hexdigest()
        if digest != record.sha256:
            raise self._damaged(index, f"checksum mismatch (sha256 {digest[:12]}…, expected {record.sha256[:12]}…)")

    def _check_shapes(self, index: int, tensors: dict[str, torch.Tensor]) -> None:
        rows, ctx = self.manifest.shards[index].rows, self.context_length
        for name, tensor in tensors.items():
            expected = (rows, ctx) if name in RESERVED_TENSORS else (rows * ctx, self.d(name))
            if tuple(tensor.shape) != expected:
                raise self._damaged(index, f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected}")

    def _damaged(self, index: int, problem: str) -> ShardIntegrityError:
        return ShardIntegrityError(
            f"shard {index} ({self.root / self.manifest.shards[index].file}) is damaged: {problem}. "
            "Rerun the harvest command with --repair to re-harvest only the damaged shards."
        )

    def shard_problem(self, index: int) -> str | None:
        """Why shard ``index`` cannot be trusted (size, checksum, shapes), or None if it is intact."""
        try:
            self._check_bytes(index, self._read_bytes(index))
            self._check_shapes(index, self._read_tensors(index, None))
        except ShardIntegrityError as exc:
            return str(exc)
        return None

    def verify(self) -> list[str]:
        """Check every shard. Returns the problems found (empty when the store is intact)."""
        problems = (self.shard_problem(i) for i in range(len(self.manifest.shards)))
        return [p for p in problems if p is not None]

    # -- tracing ---------------------------------------------------------------------
    def lookup(self, index: int, window: int = 16) -> TokenRecord:
        """Trace a vector to its token, document and position, with ``window`` tokens either side
        (within its row: what the model saw)."""
        shard, local = self.locate(index)
        arrays = self.token_arrays(shard)
        row, pos = divmod(local, self.context_length)
        lo, hi = max(0, pos - window), min(self.context_length, pos + window + 1)
        return TokenRecord(
            index=index,
            shard=shard,
            row=self.manifest.shards[shard].first_row + row,
            position=pos,
            token_id=int(arrays[TOKEN_IDS][row, pos]),
            doc_id=int(arrays[DOC_IDS][row, pos]),
            doc_position=int(arrays[DOC_POSITIONS][row, pos]),
            context_start=lo,
            context_token_ids=arrays[TOKEN_IDS][row, lo:hi].tolist(),
            context_doc_ids=arrays[DOC_IDS][row, lo:hi].tolist(),
        )

    def activations(self, hook: str, indices: list[int]) -> torch.Tensor:
        """float32 [len(indices), d] for arbitrary global indices (reads only those rows)."""
        d = self.d(hook)
        out = torch.empty((len(indices), d), dtype=torch.float32)
        for i, index in enumerate(indices):
            shard, local = self.locate(index)
            with safe_open(self.root / self.manifest.shards[shard].file, framework="pt") as handle:
                out[i] = handle.get_slice(hook)[local : local + 1].float()[0]
        return out

    def tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.root / TOKENIZER_DIR)

    # -- statistics ------------------------------------------------------------------
    def statistics(
        self,
        hook: str,
        split: str = "train",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        include_special: bool = False,
    ) -> ActivationStats:
        """Mean, per-dimension variance and mean norm in one streaming pass (float64, merged
        per shard with Chan's formula so large stores lose no precision)."""
        self.d(hook)
        count, mean, m2, norm_sum = 0, None, None, 0.0
        for index in range(len(self.manifest.shards)):
            tensors = self.load_shard(index, [hook, DOC_IDS])
            mask = split_mask(tensors[DOC_IDS].numpy(), split, val_fraction, split_seed, include_special)
            x = tensors[hook][torch.from_numpy(mask.reshape(-1))].double()
            n = x.shape[0]
            if n == 0:
                continue
            shard_mean = x.mean(0)
            shard_m2 = ((x - shard_mean) ** 2).sum(0)
            norm_sum += float(x.norm(dim=1).sum())
            if mean is None:
                count, mean, m2 = n, shard_mean, shard_m2
            else:
                delta = shard_mean - mean
                total = count + n
                mean = mean + delta * (n / total)
                m2 = m2 + shard_m2 + delta**2 * (count * n / total)
                count = total
        if count == 0:
            raise ValueError(f"split {split!r} of {self.root} holds no vectors")
        return ActivationStats(count=count, mean=mean, var=m2 / count, mean_norm=norm_sum / count)
