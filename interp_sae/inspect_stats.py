"""One streaming pass over a store split: per-feature statistics and the top-k activating tokens.

Memory is bounded by the number of features, not the store: every statistic is a running
sum, extreme or count, and the top-k is merged batch by batch on the dictionary's device.

Ranking (`rank_by`), for signed dictionaries such as VAEase whose gated mean (1 − σ) ⊙ μ can
be negative:

- ``value``: the feature activation itself (largest positive first);
- ``abs`` (the default): |activation|, i.e. the size of the feature's contribution to the
  reconstruction, whichever its sign. For ReLU/TopK SAEs, whose features are ≥ 0, it is the
  same as ``value``;
- ``one_minus_sigma``: 1 − σ, how far the posterior has left the prior (variational
  dictionaries only): how "on" the VAEase gate is, regardless of μ.

The top-k runs over the tokens where the feature fires (below): a feature that fires on fewer
than k tokens lists only those. Ties are broken deterministically by the smaller global vector
index: each score is packed with its index into one int64 key (order-preserving float bits in
the high 32 bits, the complemented index in the low 32), so ranking unique keys is exact and
reproducible whatever the batch boundaries.

Beside the top-k, a uniform random sample of each feature's firing tokens is kept (`sample_k`
per feature): the report's middle and low activation-quantile sections come from it. "Random" is
a hash of (vector index, feature), ranked with the same keys as the top-k, so the sample too is
the same whatever the batch boundaries.

A feature *fires* on a token as the dictionary's `active_mask` defines "active": non-zero for
SAEs; for variational dictionaries, the low-variance group of the token's 1-D 2-means split of
log σ². Which ranks a dictionary offers, and how it scores them, are its `rank_modes` and
`rank_scores`. Histograms count firing activations only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from activation_cache import ActivationStore, Split
from dictionaries import Dictionary
from dictionaries.data import within_norm_mask
from interp_sae.errors import ConfigError

RankScorer = Callable[[str, torch.Tensor, torch.Tensor | None], torch.Tensor]
"""(mode, firing values, auxiliary) → scores: a dictionary's `rank_scores`."""

RANK_MODES = ("value", "abs", "one_minus_sigma")
DEFAULT_RANK_BY = "abs"

# Symmetric log-spaced bin edges: ±10^(k/4) for k = −12 … 16 (1e-3 … 1e4 in raw feature units);
# bin i holds edges[i−1] ≤ v < edges[i], with under- and overflow bins at the ends.
_MAGNITUDES = [10 ** (k / 4) for k in range(-12, 17)]
HISTOGRAM_EDGES = [-m for m in reversed(_MAGNITUDES)] + _MAGNITUDES

_LOW_MASK = (1 << 32) - 1
_SENTINEL = torch.iinfo(torch.int64).min  # an empty top-k slot


@dataclass
class FeatureStatistics:
    """The pass's result; tensors are on the CPU, indexed by feature."""

    tokens: int  # vectors seen
    left_out: int  # vectors longer than the pass's max_norm, not seen
    rank_by: str
    fire_count: torch.Tensor  # int64 [κ]
    sum: torch.Tensor  # float64 [κ], over all tokens
    fire_sum: torch.Tensor  # float64 [κ], over firing tokens
    max: torch.Tensor  # float32 [κ]
    min: torch.Tensor  # float32 [κ]
    histogram: torch.Tensor  # int64 [κ, len(HISTOGRAM_EDGES) + 1], firing activations only
    top_indices: list[list[int]]  # per feature, global vector indices, best first
    top_scores: list[list[float]]  # the matching rank scores
    sample_indices: list[list[int]]  # per feature, a uniform sample of its firing tokens, in hash order

    @property
    def mean(self) -> torch.Tensor:
        """Mean activation over every token of the split (what mean-ablation substitutes)."""
        return (self.sum / max(self.tokens, 1)).float()

    @property
    def frequency(self) -> torch.Tensor:
        return self.fire_count.double() / max(self.tokens, 1)

    @property
    def mean_when_firing(self) -> torch.Tensor:
        return (self.fire_sum / self.fire_count.clamp(min=1)).float()


def resolve_rank_by(dictionary: Dictionary, rank_by: str | None) -> str:
    rank_by = rank_by or DEFAULT_RANK_BY
    if rank_by not in RANK_MODES:
        raise ConfigError(f"rank_by must be one of {RANK_MODES}, got {rank_by!r}")
    if rank_by not in dictionary.rank_modes:
        raise ConfigError(
            f"{dictionary.architecture} cannot rank by {rank_by!r} (it has no σ, only variational dictionaries "
            f"such as vaease do): use one of {dictionary.rank_modes}"
        )
    return rank_by


def pack_keys(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (score descending, index ascending), elementwise for scores float
    and indices int64 of the same shape."""
    bits = (scores.float() + 0.0).view(torch.int32)  # + 0.0 turns −0.0 into +0.0 so they tie
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # IEEE float order → signed integer order
    return (ordered.long() << 32) + (_LOW_MASK - indices)


def unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_keys`: (scores float32, indices int64)."""
    high = (keys >> 32).int()
    scores = (high ^ ((high >> 31) & 0x7FFFFFFF)).view(torch.float32)
    return scores, _LOW_MASK - (keys & _LOW_MASK)


class FeatureAccumulator:
    """Running statistics and top-k of κ features over batches.

    Everything but the sum and the extremes is computed on the batch's list of firing
    (token, feature) entries, which is short for sparse features: that keeps the pass close to
    the cost of encoding. The top-k is kept as a [κ, k] table of keys, best first; only a
    batch's entries that beat their feature's current k-th key are sorted and merged in.
    """

    def __init__(
        self,
        n_features: int,
        top_k: int,
        rank_by: str,
        device: torch.device,
        scorer: RankScorer,
        sample_k: int = 0,
    ):
        if top_k < 0 or sample_k < 0:
            raise ConfigError(f"top_k and sample_k must be ≥ 0, got {top_k} and {sample_k}")
        self.top_k, self.rank_by, self.scorer, self.tokens = top_k, rank_by, scorer, 0
        self.edges = torch.tensor(HISTOGRAM_EDGES, device=device)
        n_bins = len(HISTOGRAM_EDGES) + 1
        self.fire_count = torch.zeros(n_features, dtype=torch.int64, device=device)
        self.sum = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.fire_sum = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.max = torch.full((n_features,), -torch.inf, device=device)
        self.min = torch.full((n_features,), torch.inf, device=device)
        self.histogram = torch.zeros(n_features * n_bins, dtype=torch.int64, device=device)
        self.keys = torch.full((n_features, top_k), _SENTINEL, dtype=torch.int64, device=device)
        self.sample_keys = torch.full((n_features, sample_k), _SENTINEL, dtype=torch.int64, device=device)

    def update(
        self, features: torch.Tensor, fires: torch.Tensor, indices: torch.Tensor, auxiliary: torch.Tensor | None = None
    ) -> None:
        """Add a batch: features, fires (and what the scorer needs beyond the values, e.g. log σ²)
        [B, κ]; indices int64 [B] (global vector indices)."""
        self.tokens += features.shape[0]
        self.sum += features.sum(0).double()  # float32 within a batch, float64 across batches
        self.max = torch.maximum(self.max, features.amax(0))  # amax/amin: several times faster than aminmax
        self.min = torch.minimum(self.min, features.amin(0))
        flat = fires.reshape(-1).nonzero().squeeze(1)  # 1-D gathers: much faster than [rows, cols] indexing
        rows, cols = flat // fires.shape[1], flat % fires.shape[1]
        values = features.reshape(-1)[flat]
        self.fire_count += torch.bincount(cols, minlength=len(self.fire_count))
        self.fire_sum.index_add_(0, cols, values.double())
        bins = torch.bucketize(values, self.edges, right=True)
        self.histogram += torch.bincount(cols * (len(self.edges) + 1) + bins, minlength=self.histogram.numel())
        if self.top_k:
            scores = self.scorer(self.rank_by, values, None if auxiliary is None else auxiliary.reshape(-1)[flat])
            self.keys = _merge(self.keys, cols, pack_keys(scores, indices[rows]))
        if self.sample_keys.shape[1]:
            self.sample_keys = _merge(
                self.sample_keys, cols, pack_keys(_uniform_hash(indices[rows], cols), indices[rows])
            )

    def result(self, left_out: int = 0) -> FeatureStatistics:
        keys = self.keys.cpu()
        scores, indices = unpack_keys(keys)
        filled = keys != _SENTINEL
        sample_keys = self.sample_keys.cpu()
        _, sampled = unpack_keys(sample_keys)
        return FeatureStatistics(
            tokens=self.tokens,
            left_out=left_out,
            rank_by=self.rank_by,
            fire_count=self.fire_count.cpu(),
            sum=self.sum.cpu(),
            fire_sum=self.fire_sum.cpu(),
            max=self.max.cpu(),
            min=self.min.cpu(),
            histogram=self.histogram.view(len(self.fire_count), -1).cpu(),
            top_indices=[i[m].tolist() for i, m in zip(indices, filled)],
            top_scores=[s[m].tolist() for s, m in zip(scores, filled)],
            sample_indices=[i[m].tolist() for i, m in zip(sampled, sample_keys != _SENTINEL)],
        )


def _merge(table: torch.Tensor, cols: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """`table` [κ, k] of keys (best first) with a batch's (feature, key) entries merged in."""
    better = keys > table[:, -1][cols]
    cols, keys = cols[better], keys[better]
    if not len(keys):
        return table
    n_features, k = table.shape
    order = keys.argsort(descending=True)  # keys are unique: no ties to keep stable
    order = order[cols[order].argsort(stable=True)]  # grouped by feature, best key first
    cols, keys = cols[order], keys[order]
    counts = torch.bincount(cols, minlength=n_features)
    rank = torch.arange(len(keys), device=keys.device) - (torch.cumsum(counts, 0) - counts)[cols]
    keep = rank < k
    batch_best = torch.full_like(table, _SENTINEL)
    batch_best[cols[keep], rank[keep]] = keys[keep]
    return torch.cat([table, batch_best], 1).topk(k, dim=1).values  # sorted: best first


def _uniform_hash(indices: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """A float in [0, 1) per (vector index, feature), uniform and fixed: the sample's random order.
    A splitmix-style mix in int64 (multiplication wraps), whose top 24 bits become the float."""
    h = indices * 0x9E3779B1 + features * 0x85EBCA77 + 0x165667B1
    h = (h ^ (h >> 15)) * 0x2C1B3C6D
    h = (h ^ (h >> 12)) * 0x297A2D39
    h = h ^ (h >> 15)
    return ((h >> 8) & 0xFFFFFF).float() / float(1 << 24)


def split_batches(
    store: ActivationStore, hook: str, side: str, split: Split, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float32 vectors [B, d] on `device`, global indices int64 [B]) of one side of a split, in store order."""
    for chunk in store.iter_split(hook, side, split):
        for lo in range(0, len(chunk.indices), batch_size):
            x = chunk.vectors[lo : lo + batch_size].to(device, non_blocking=True).float()
            yield x, chunk.indices[lo : lo + batch_size].to(device)


@torch.no_grad()
def feature_statistics(
    store: ActivationStore,
    dictionary: Dictionary,
    hook: str,
    *,
    side: str = "validation",
    split: Split | None = None,
    top_k: int = 20,
    rank_by: str | None = None,
    batch_size: int = 4096,
    sample_k: int = 0,
    max_norm: float | None = None,
) -> FeatureStatistics:
    """The streaming pass over one side of `store`'s split at `hook`, on the dictionary's device,
    without the vectors longer than `max_norm` (None: every vector), which it counts as left out."""
    if len(store) > _LOW_MASK:
        raise ConfigError(f"the store holds {len(store):,} vectors; top-k keys address at most {_LOW_MASK:,}")
    rank_by = resolve_rank_by(dictionary, rank_by)
    device = dictionary.decoder.weight.device
    acc = FeatureAccumulator(dictionary.config.n_latents, top_k, rank_by, device, dictionary.rank_scores, sample_k)
    left_out = 0
    for x, indices in split_batches(store, hook, side, split or Split(), batch_size, device):
        if max_norm is not None:
            kept = within_norm_mask(x, max_norm)
            left_out += len(kept) - int(kept.sum())
            x, indices = x[kept], indices[kept]
            if len(x) == 0:
                continue
        features, fires, auxiliary = dictionary.inspection_batch(x)
        acc.update(features, fires, indices, auxiliary)
    if acc.tokens == 0:
        longer = f" ({left_out:,} left out as longer than {max_norm:g})" if left_out else ""
        raise ConfigError(f"the {side!r} side of {store.root}'s split holds no vectors{longer}")
    return acc.result(left_out)
