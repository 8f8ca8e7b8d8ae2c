"""Neighbours, activation-quantile samples and attributed loss effects, each against a brute-force
computation on the tiny harvested store."""

import pytest
import torch
from conftest import HOOK

from activation_cache import Split
from interp_sae.inspect_stats import feature_statistics, split_batches
from interp_sae.inspector import quantile_sections
from interp_sae.loss_effects import attributed_loss_effects
from interp_sae.neighbours import co_firing, decoder_neighbours
from interp_sae.splice import prediction_mask, run_logits, token_losses


def all_fires(store, dictionary, side="all", limit=None):
    fires = torch.cat(
        [
            dictionary.inspection_batch(x)[1]
            for x, _ in split_batches(store, HOOK, side, Split(), 512, torch.device("cpu"))
        ]
    )
    return fires[:limit] if limit else fires


def test_decoder_neighbours_are_the_largest_cosines_of_other_features(sae):
    found = decoder_neighbours(sae, 5)
    unit = torch.nn.functional.normalize(sae.feature_directions.detach(), dim=1)
    cosines = (unit @ unit.T).fill_diagonal_(-2)
    for j in (0, 17, 63):
        expected = cosines[j].topk(5).indices.tolist()
        assert [n["feature"] for n in found[j]] == expected
        assert found[j][0]["cosine"] == pytest.approx(float(cosines[j, expected[0]]), abs=1e-5)


def test_co_firing_counts_every_pair_of_the_first_tokens_exactly(tiny_store, sae):
    counted = co_firing(tiny_store, sae, HOOK, side="all", split=Split(), max_tokens=700, batch_size=256)
    assert counted.tokens == 700
    fires = all_fires(tiny_store, sae, limit=700).float()
    pairs = fires.T @ fires  # [κ, κ]: tokens on which both fire
    n = sae.config.n_latents
    found = counted.neighbours(n, 4)
    for j in range(n):
        if pairs[j, j] == 0:
            assert found[j] == []
            continue
        others = [(-int(pairs[j, b]), b) for b in range(n) if b != j and pairs[j, b] > 0]
        expected = [b for _, b in sorted(others)[:4]]
        assert [x["feature"] for x in found[j]] == expected
        for x in found[j]:
            assert x["count"] == int(pairs[j, x["feature"]])
            assert x["fraction"] == pytest.approx(float(pairs[j, x["feature"]] / pairs[j, j]), abs=1e-5)


def test_co_firing_stops_at_its_pair_budget(tiny_store, sae):
    counted = co_firing(tiny_store, sae, HOOK, side="all", split=Split(), max_pairs=1, batch_size=100)
    assert counted.tokens == 100  # one batch, then the budget is spent


def test_the_quantile_sample_is_firing_tokens_whatever_the_batches(tiny_store, vaease):
    small = feature_statistics(tiny_store, vaease, HOOK, side="all", top_k=2, batch_size=97, sample_k=9)
    large = feature_statistics(tiny_store, vaease, HOOK, side="all", top_k=2, batch_size=4096, sample_k=9)
    assert small.sample_indices == large.sample_indices
    fires = all_fires(tiny_store, vaease)
    indices = torch.cat([i for _, i in split_batches(tiny_store, HOOK, "all", Split(), 512, torch.device("cpu"))])
    row_of = {int(index): row for row, index in enumerate(indices)}
    for j, sample in enumerate(small.sample_indices):
        assert len(sample) == min(9, int(fires[:, j].sum())) == len(set(sample))
        assert all(fires[row_of[i], j] for i in sample)


def test_quantile_sections_split_a_sample_into_middle_and_low_thirds():
    examples = [{"activation": v} for v in (-9.0, 1.0, 2.0, 3.0, -4.0, 5.0)]
    sections = quantile_sections(examples, "abs", per_section=5)
    assert [s["name"] for s in sections] == ["middle", "low"]
    assert [e["activation"] for e in sections[0]["examples"]] == [-4.0, 3.0]  # by |activation|: -9, 5 are the top
    assert [e["activation"] for e in sections[1]["examples"]] == [2.0, 1.0]
    assert sections[0]["range"] == [-4.0, 3.0]
    assert quantile_sections([], "abs", 5) == []


def test_attributed_loss_effect_is_the_derivative_of_the_loss_along_the_ablation(tiny_store, sae, tiny_lm):
    rows = 4
    effects = attributed_loss_effects(tiny_lm, sae, tiny_store, HOOK, Split(), side="validation", max_rows=rows)
    ids, doc_mask, side_mask = (torch.from_numpy(a) for a in tiny_store.rows("validation", Split(), rows))
    ids = ids.long()
    counted = prediction_mask(doc_mask) & side_mask[:, 1:]
    j = int(effects.abs().argmax())

    def mean_loss(epsilon):
        def shrink(activation, hook):  # x → x − ε·a_j·d_j at document positions
            a = sae.encode(activation[doc_mask].float())[:, j]
            out = activation.clone()
            out[doc_mask] -= epsilon * a[:, None] * sae.feature_directions[j]
            return out

        return float(token_losses(run_logits(tiny_lm, ids, [(HOOK, shrink)]), ids)[counted].double().mean())

    epsilon = 1e-2
    slope = (mean_loss(epsilon) - mean_loss(-epsilon)) / (2 * epsilon)
    assert float(effects[j]) == pytest.approx(slope, rel=2e-2)
    assert float(effects[j]) != 0
