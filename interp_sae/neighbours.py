"""Each feature's neighbours, two ways:

- **decoder**: the features whose decoder directions point most the same way (cosine of the rows
  of `feature_directions`), computed in chunks so a wide dictionary never needs a [κ, κ] matrix;
- **co-firing**: the features that fire on the same tokens most often, over the first
  `max_tokens` vectors of a split. Pairs are counted from each token's list of firing features
  (Σ active² pairs per token, small for sparse dictionaries), never as a dense [κ, κ] table; the
  count stops early once `max_pairs` pairs have been seen, so a dense dictionary stays cheap.
  `fraction` is P(neighbour fires | feature fires) over the counted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from activation_cache import ActivationStore, Split
from dictionaries import Dictionary
from dictionaries.data import within_norm
from interp_sae.inspect_stats import split_batches

_SIMILARITY_CHUNK = 1024  # features per [chunk, κ] block of cosines


@torch.no_grad()
def decoder_neighbours(dictionary: Dictionary, n: int) -> list[list[dict[str, Any]]]:
    """Per feature, the `n` other features with the largest decoder cosine, largest first."""
    directions = dictionary.feature_directions.float()
    unit = directions / directions.norm(dim=1, keepdim=True).clamp(min=1e-12)
    n_features = len(unit)
    n = min(n, n_features - 1)
    found = []
    for lo in range(0, n_features, _SIMILARITY_CHUNK):
        cosines = unit[lo : lo + _SIMILARITY_CHUNK] @ unit.T
        own = torch.arange(lo, lo + len(cosines), device=cosines.device)
        cosines[torch.arange(len(cosines)), own] = -torch.inf  # a feature is not its own neighbour
        values, indices = cosines.topk(n, dim=1)
        found += [
            [{"feature": int(j), "cosine": round(float(c), 5)} for j, c in zip(row_j, row_c)]
            for row_j, row_c in zip(indices.tolist(), values.tolist())
        ]
    return found


@dataclass
class CoFiring:
    """How often each ordered pair of features fired on the same token, over `tokens` vectors."""

    tokens: int
    keys: torch.Tensor  # int64, a * κ + b, unique, for every ordered pair firing together (a == b included)
    counts: torch.Tensor  # int64, matching keys

    def neighbours(self, n_features: int, n: int) -> list[list[dict[str, Any]]]:
        """Per feature a, the `n` features b ≠ a firing with it most often, most first."""
        a, b = self.keys // n_features, self.keys % n_features
        fires = torch.zeros(n_features, dtype=torch.int64)
        fires[a[a == b]] = self.counts[a == b]
        other = a != b
        a, b, counts = a[other], b[other], self.counts[other]
        order = counts.argsort(descending=True, stable=True)
        order = order[a[order].argsort(stable=True)]  # grouped by feature, most frequent partner first
        a, b, counts = a[order], b[order], counts[order]
        per_feature = torch.bincount(a, minlength=n_features)
        rank = torch.arange(len(a)) - (torch.cumsum(per_feature, 0) - per_feature)[a]
        found: list[list[dict[str, Any]]] = [[] for _ in range(n_features)]
        for fa, fb, count in zip(*(t[rank < n].tolist() for t in (a, b, counts))):
            found[fa].append({"feature": fb, "count": count, "fraction": round(count / int(fires[fa]), 5)})
        return found


@torch.no_grad()
def co_firing(
    store: ActivationStore,
    dictionary: Dictionary,
    hook: str,
    *,
    side: str,
    split: Split,
    max_tokens: int = 65536,
    max_pairs: int = 50_000_000,
    batch_size: int = 4096,
    max_norm: float | None = None,
) -> CoFiring:
    """Count, over at most `max_tokens` vectors of one side of the split (none longer than
    `max_norm`), how often each ordered pair of features fires on the same token (see module
    docstring)."""
    device = dictionary.decoder.weight.device
    n_features = dictionary.config.n_latents
    keys = torch.zeros(0, dtype=torch.int64)
    counts = torch.zeros(0, dtype=torch.int64)
    tokens = pairs_seen = 0
    for x, _ in split_batches(store, hook, side, split, batch_size, device):
        x = within_norm(x, max_norm)[: max_tokens - tokens]
        if len(x) == 0:  # every vector of the batch was longer than max_norm
            continue
        fires = dictionary.inspection_batch(x)[1]
        batch_keys = _pair_keys(fires, n_features)
        unique, batch_counts = batch_keys.unique(return_counts=True)
        merged, inverse = torch.cat([keys, unique.cpu()]).unique(return_inverse=True)
        counts = torch.zeros(len(merged), dtype=torch.int64).index_add_(
            0, inverse, torch.cat([counts, batch_counts.cpu()])
        )
        keys = merged
        tokens += len(x)
        pairs_seen += len(batch_keys)
        if tokens >= max_tokens or pairs_seen >= max_pairs:
            break
    return CoFiring(tokens=tokens, keys=keys, counts=counts)


def _pair_keys(fires: torch.Tensor, n_features: int) -> torch.Tensor:
    """a * κ + b for every ordered pair (a, b) of features firing on the same row of `fires` [B, κ]."""
    flat = fires.reshape(-1).nonzero().squeeze(1)
    rows, cols = flat // n_features, flat % n_features
    per_row = torch.bincount(rows, minlength=fires.shape[0])
    row_start = torch.cumsum(per_row, 0) - per_row
    repeats = per_row[rows]  # entry e pairs with every entry of its row
    first = cols.repeat_interleave(repeats)
    offsets = torch.arange(int(repeats.sum()), device=fires.device) - (
        torch.cumsum(repeats, 0) - repeats
    ).repeat_interleave(repeats)
    second = cols[row_start[rows].repeat_interleave(repeats) + offsets]
    return first * n_features + second
