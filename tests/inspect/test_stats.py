"""The streaming statistics + top-k pass against brute force on the whole split at once."""

import pytest
import torch
from conftest import HOOK

import dictionaries as D
from activation_cache import Split
from interp_sae.inspect_stats import (
    HISTOGRAM_EDGES,
    FeatureAccumulator,
    feature_statistics,
    pack_keys,
    split_batches,
    unpack_keys,
)
from interp_sae.provenance import resolve


def brute_force_top_k(
    scores: torch.Tensor, fires: torch.Tensor, indices: torch.Tensor, k: int
) -> list[list[tuple[float, int]]]:
    """Per feature, over the tokens it fires on: (score, index) by score descending, then index ascending."""
    return [
        sorted(
            [(s, i) for s, i, f in zip(column.tolist(), indices.tolist(), fired.tolist()) if f],
            key=lambda p: (-p[0], p[1]),
        )[:k]
        for column, fired in zip(scores.T, fires.T)
    ]


def streamed(acc_result):
    return [list(zip(s, i)) for s, i in zip(acc_result.top_scores, acc_result.top_indices)]


def test_key_packing_round_trips_and_orders_like_score_then_index():
    scores = torch.tensor([-2.5, -0.0, 0.0, 1e-30, 3.0, float("inf"), -float("inf"), 3.0])
    indices = torch.tensor([5, 1, 0, 9, 2**32 - 1, 7, 8, 4])
    keys = pack_keys(scores, indices)
    back_scores, back_indices = unpack_keys(keys)
    assert torch.equal(back_indices, indices)
    assert torch.equal(back_scores, scores + 0.0)
    order = keys.argsort(descending=True).tolist()
    assert [indices[i].item() for i in order] == [7, 4, 2**32 - 1, 9, 0, 1, 5, 8]  # -0.0 ties +0.0: index 0 first


@pytest.mark.parametrize("rank_by", ["value", "abs", "one_minus_sigma"])
@pytest.mark.parametrize("batch_sizes", [[7, 1, 13, 50, 3], [74]])
def test_streaming_top_k_equals_brute_force_with_ties(batch_sizes, rank_by):
    generator = torch.Generator().manual_seed(0)
    n, kappa, k = sum(batch_sizes), 6, 5
    # Few distinct values, signed: many ties at every rank, broken by the smaller index.
    features = torch.randint(-3, 4, (n, kappa), generator=generator).float() / 2
    log_var = -torch.randint(0, 3, (n, kappa), generator=generator).float()
    fires = torch.rand(n, kappa, generator=generator) < 0.7
    indices = torch.randperm(10 * n, generator=generator)[:n].sort().values  # increasing, with gaps (like a split)
    scorer = D.create(D.make_config("vaease", d=2, n_latents=kappa)).rank_scores  # offers every mode
    acc = FeatureAccumulator(kappa, k, rank_by, torch.device("cpu"), scorer)
    start = 0
    for size in batch_sizes:
        batch = slice(start, start + size)
        acc.update(features[batch], fires[batch], indices[batch], log_var[batch])
        start += size
    expected = brute_force_top_k(scorer(rank_by, features, log_var), fires, indices, k)
    assert streamed(acc.result()) == expected


def test_top_k_larger_than_the_data_lists_every_token_once():
    scores = torch.tensor([[1.0], [2.0]])
    sae = D.create(D.make_config("sae_l1", d=2, n_latents=1))
    acc = FeatureAccumulator(1, 5, "value", torch.device("cpu"), sae.rank_scores)
    acc.update(scores, scores != 0, torch.tensor([10, 11]))
    result = acc.result()
    assert result.top_indices == [[11, 10]] and result.top_scores == [[2.0, 1.0]]


@pytest.mark.parametrize(
    "architecture,rank_by",
    [("sae_l1", "value"), ("sae_l1", "abs"), ("vaease", "value"), ("vaease", "abs"), ("vaease", "one_minus_sigma")],
)
def test_store_pass_equals_brute_force_on_the_whole_split(tiny_store, sae, vaease, architecture, rank_by):
    dictionary = sae if architecture == "sae_l1" else vaease
    batch_size = 100
    stats = feature_statistics(
        tiny_store, dictionary, HOOK, side="validation", top_k=7, rank_by=rank_by, batch_size=batch_size
    )
    parts = [
        (dictionary.inspection_batch(x), i)
        for x, i in split_batches(tiny_store, HOOK, "validation", Split(), batch_size, torch.device("cpu"))
    ]
    features = torch.cat([p[0][0] for p in parts])
    fires = torch.cat([p[0][1] for p in parts])
    log_var = torch.cat([p[0][2] for p in parts]) if parts[0][0][2] is not None else None
    indices = torch.cat([p[1] for p in parts])

    assert streamed(stats) == brute_force_top_k(dictionary.rank_scores(rank_by, features, log_var), fires, indices, 7)
    assert stats.tokens == len(indices)
    assert torch.equal(stats.fire_count, fires.sum(0))
    torch.testing.assert_close(stats.mean, features.double().mean(0).float())
    assert torch.equal(stats.max, features.max(0).values) and torch.equal(stats.min, features.min(0).values)
    bins = torch.bucketize(features, torch.tensor(HISTOGRAM_EDGES), right=True)
    expected = torch.stack(
        [torch.bincount(bins[fires[:, j], j], minlength=len(HISTOGRAM_EDGES) + 1) for j in range(features.shape[1])]
    )
    assert torch.equal(stats.histogram, expected)
    if rank_by == "value" and architecture == "vaease":
        assert (features < 0).any()  # the signed case is really exercised


def test_one_minus_sigma_needs_a_variational_dictionary(tiny_store, sae):
    with pytest.raises(ValueError, match="variational"):
        feature_statistics(tiny_store, sae, HOOK, rank_by="one_minus_sigma")


def test_width_mismatch_names_both_widths_and_the_fix(tiny_store):
    narrow = D.create(D.make_config("sae_l1", d=16, n_latents=8), seed=0)
    with pytest.raises(ValueError, match=r"d=16.*d=32.*--hook"):
        resolve(narrow, tiny_store, HOOK)


def test_vectors_longer_than_the_dictionarys_norm_cap_are_left_out_and_counted(tiny_store, sae):
    """A dictionary trained under a norm cap never saw the longer vectors: inspection leaves them out
    of the statistics, the top examples and co-firing (same results as on the kept vectors alone),
    counts them, and keeps them with include_long_vectors."""
    from interp_sae.inspector import InspectConfig, inspect
    from interp_sae.neighbours import co_firing

    batches = list(split_batches(tiny_store, HOOK, "validation", Split(), 100, torch.device("cpu")))
    x, indices = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    norms = x.norm(dim=-1)
    cap = float(norms.median())
    kept = ~(norms > cap)
    features, fires, _ = sae.inspection_batch(x[kept])

    stats = feature_statistics(tiny_store, sae, HOOK, side="validation", top_k=5, batch_size=100, max_norm=cap)
    assert (stats.tokens, stats.left_out) == (int(kept.sum()), int((~kept).sum()))
    assert stats.left_out > 0
    assert streamed(stats) == brute_force_top_k(sae.rank_scores("abs", features, None), fires, indices[kept], 5)
    assert torch.equal(stats.fire_count, fires.sum(0))
    assert co_firing(tiny_store, sae, HOOK, side="validation", split=Split(), max_norm=cap).tokens == int(kept.sum())

    sae.metadata["max_input_norm"] = cap
    try:
        capped = inspect(tiny_store, sae, config=InspectConfig(top_k=5, neighbours=0, quantile_examples=0))
        every = inspect(
            tiny_store, sae, config=InspectConfig(top_k=5, neighbours=0, quantile_examples=0, include_long_vectors=True)
        )
    finally:
        del sae.metadata["max_input_norm"]
    assert (capped["max_norm"], capped["tokens_left_out"], capped["tokens"]) == (cap, stats.left_out, stats.tokens)
    assert (every["max_norm"], every["tokens_left_out"], every["tokens"]) == (None, 0, len(indices))
    long_ones = set(indices[~kept].tolist())
    assert not any(e["index"] in long_ones for f in capped["features"] for e in f["top_examples"])
    assert any(e["index"] in long_ones for f in every["features"] for e in f["top_examples"])
    from interp_sae.report import render_index

    assert f"({stats.left_out:,} longer than the training norm cap" in render_index(capped)
    assert "norm cap" not in render_index(every)
