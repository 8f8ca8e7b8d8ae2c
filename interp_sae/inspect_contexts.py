"""The context of each top example: the window of tokens around it (within its packed row: what
the model saw), decoded, with the activating token marked and the feature's activation on every
window token, recomputed by encoding the stored activations of those positions.

Positions that belong to no document (BOS, separators, padding) show their token but get no
activation (None): dictionaries are trained without them and their activations there mean nothing.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch

from activation_cache import ActivationStore, ShardTokens
from dictionaries import Dictionary
from interp_sae.errors import ConfigError

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"
_VECTORS_PER_CHUNK = 16384  # bounds the [vectors, κ] features held at once


def _significant(value: float, digits: int = 5) -> float:
    """Rounded for JSON size: the report needs no more than a few significant digits."""
    return float(f"{value:.{digits}g}")


class TokenText:
    """Token id → text, decoded once per id."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def token(self, token_id: int) -> str:
        if token_id not in self._cache:
            self._cache[token_id] = self.tokenizer.decode([token_id])
        return self._cache[token_id]

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)


@torch.no_grad()
def top_contexts(
    store: ActivationStore, dictionary: Dictionary, hook: str, top_indices: list[list[int]], window: int, tokenizer: Any
) -> list[list[dict]]:
    """Per feature, one context record per top example (same order as `top_indices`).

    Each shard is read once; window vectors are encoded in chunks so memory stays bounded.
    """
    if window < 0:
        raise ConfigError(f"window must be ≥ 0, got {window}")
    by_shard: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # shard → (feature, rank, local index)
    for feature, indices in enumerate(top_indices):
        for rank, index in enumerate(indices):
            shard, local = store.locate(index)
            by_shard[shard].append((feature, rank, local))
    contexts: list[list[dict | None]] = [[None] * len(indices) for indices in top_indices]
    words = TokenText(tokenizer)
    per_chunk = max(1, _VECTORS_PER_CHUNK // (2 * window + 1))
    for shard, examples in sorted(by_shard.items()):
        vectors, tokens = store.vectors(shard, hook), store.tokens(shard)
        for lo in range(0, len(examples), per_chunk):
            chunk = examples[lo : lo + per_chunk]
            for (feature, rank, _), record in zip(
                chunk, _chunk_contexts(dictionary, vectors, tokens, chunk, window, store.context_length, words)
            ):
                contexts[feature][rank] = record
    return contexts  # type: ignore[return-value]  # every slot is filled: one record per top example


def _chunk_contexts(
    dictionary: Dictionary,
    vectors: torch.Tensor,
    shard_tokens: ShardTokens,
    chunk: list[tuple[int, int, int]],
    window: int,
    ctx: int,
    words: TokenText,
) -> list[dict]:
    spans = []  # (row, lo, hi, position)
    for _, _, local in chunk:
        row, pos = divmod(local, ctx)
        spans.append((row, max(0, pos - window), min(ctx, pos + window + 1), pos))
    wanted = np.unique(np.concatenate([np.arange(row * ctx + lo, row * ctx + hi) for row, lo, hi, _ in spans]))
    device = dictionary.decoder.weight.device
    features = dictionary.encode(vectors[torch.from_numpy(wanted)].to(device).float()).cpu()
    first = shard_tokens.first_index
    records = []
    for (feature, _, local), (row, lo, hi, pos) in zip(chunk, spans):
        token_ids = shard_tokens.token_ids[row, lo:hi].tolist()
        doc_ids = shard_tokens.doc_ids[row, lo:hi].tolist()
        values = features[np.searchsorted(wanted, np.arange(row * ctx + lo, row * ctx + hi)), feature].tolist()
        tokens = [words.token(t) for t in token_ids]
        center = pos - lo
        records.append(
            {
                "index": first + local,
                "activation": _significant(values[center]),
                "row": (first + local) // ctx,
                "position": pos,
                "doc_id": doc_ids[center],
                "doc_position": int(shard_tokens.doc_positions[row, pos]),
                "window_start": lo,
                "center": center,
                "token_ids": token_ids,
                "tokens": tokens,
                "activations": [_significant(v) if d >= 0 else None for v, d in zip(values, doc_ids)],
                "text": words.text(token_ids),
                "marked_text": words.text(token_ids[:center])
                + MARK_OPEN
                + tokens[center]
                + MARK_CLOSE
                + words.text(token_ids[center + 1 :]),
            }
        )
    return records
