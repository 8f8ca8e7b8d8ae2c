"""Splicing and ablation inside the running model."""

import pytest
import torch
from conftest import HOOK

import dictionaries as D
from interp_sae.ablation import ablate, text_sequence
from interp_sae.splice import Splice, loss_recovered, prediction_mask, run_logits, token_losses

TEXT = "The quick brown fox jumps over the lazy dog. Sparse autoencoders find features."


def ids_and_mask(lm):
    ids, mask = text_sequence(lm, TEXT)
    return torch.tensor([ids]), torch.tensor([mask])


def recorded_output(lm, ids, hooks):
    """Run with `hooks` at HOOK and return what the hook point finally outputs."""
    seen = {}

    def record(activation, hook):
        seen["out"] = activation.clone()
        return activation

    run_logits(lm, ids, hooks + [(HOOK, record)])
    return seen["out"]


def test_error_term_and_no_ablation_reproduce_the_clean_model_exactly(tiny_lm, vaease):
    ids, mask = ids_and_mask(tiny_lm)
    clean = run_logits(tiny_lm, ids)
    spliced = run_logits(tiny_lm, ids, [(HOOK, Splice(vaease, HOOK, with_error=True).for_mask(mask))])
    assert torch.equal(clean, spliced)
    assert torch.equal(token_losses(clean, ids), token_losses(spliced, ids))


@pytest.mark.parametrize("with_error", [True, False])
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablating_a_feature_changes_the_hook_output_by_its_decoder_contribution(tiny_lm, vaease, with_error, mode):
    ids, mask = ids_and_mask(tiny_lm)
    j = 7
    means = torch.linspace(-1, 1, vaease.config.n_latents)
    baseline = recorded_output(tiny_lm, ids, [(HOOK, Splice(vaease, HOOK, with_error=with_error).for_mask(mask))])
    ablated = recorded_output(
        tiny_lm,
        ids,
        [(HOOK, Splice(vaease, HOOK, with_error=with_error, ablate=[j], mode=mode, means=means).for_mask(mask))],
    )
    clean = recorded_output(tiny_lm, ids, [])
    f = vaease.encode(clean[mask])[:, j]
    target = means[j] if mode == "mean" else 0.0
    expected = (target - f)[:, None] * vaease.feature_directions[j]
    torch.testing.assert_close(ablated[mask] - baseline[mask], expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(ablated[~mask], clean[~mask])  # BOS keeps its clean activation


def test_a_perfect_dictionary_recovers_all_the_loss(tiny_lm, tiny_store):
    perfect = D.create(D.make_config("sae_l1", d=32, n_latents=64), seed=0)
    eye = torch.eye(32)
    with torch.no_grad():  # ReLU(x) − ReLU(−x) = x
        perfect.encoder.weight.copy_(torch.cat([eye, -eye]))
        perfect.encoder.bias.zero_()
        perfect.decoder.weight.copy_(torch.cat([eye, -eye], 1))
        perfect.decoder.bias.zero_()
    result = loss_recovered(tiny_lm, perfect, tiny_store, hook=HOOK, max_rows=6, batch_rows=4)
    assert result["spliced_loss"] == pytest.approx(result["clean_loss"], abs=1e-5)
    assert result["fraction_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert result["zero_ablated_loss"] != result["clean_loss"]  # a random model: either way, but different
    assert result["rows"] == 6


def test_loss_recovered_counts_only_document_predictions_of_the_split(tiny_lm, tiny_store, sae):
    from activation_cache import Split

    result = loss_recovered(tiny_lm, sae, tiny_store, hook=HOOK, max_rows=1000)
    expected = 0
    for shard in range(tiny_store.num_shards):
        doc_ids = tiny_store.tokens(shard).doc_ids
        in_split = torch.from_numpy(Split(0.1, 0).mask(doc_ids, "validation"))
        expected += int((prediction_mask(torch.from_numpy(doc_ids >= 0)) & in_split[:, 1:]).sum())
    assert result["predictions"] == expected
    gap = result["zero_ablated_loss"] - result["clean_loss"]
    assert result["fraction_recovered"] == pytest.approx((result["zero_ablated_loss"] - result["spliced_loss"]) / gap)


def test_ablation_reports_every_prediction_after_bos(tiny_lm, vaease):
    result = ablate(tiny_lm, vaease, HOOK, [text_sequence(tiny_lm, TEXT)], [3, 4], top_n=2)
    sequence = result["sequences"][0]
    n = len(sequence["token_ids"])
    assert [p["position"] for p in sequence["predictions"]] == list(range(1, n - 1))
    assert len(sequence["most_moved"]) == 2 and len(sequence["feature_activations"]["3"]) == n
    p = sequence["predictions"][0]
    assert p["delta_loss"] == pytest.approx(p["loss_after"] - p["loss_before"])
    assert result["mean_delta_loss"] != 0


def test_ablating_a_silent_feature_changes_nothing(tiny_lm, sae):
    ids, mask = ids_and_mask(tiny_lm)
    clean = recorded_output(tiny_lm, ids, [])
    silent = int((sae.encode(clean[mask]) == 0).all(0).nonzero()[0])
    result = ablate(tiny_lm, sae, HOOK, [text_sequence(tiny_lm, TEXT)], [silent])
    assert all(p["delta_loss"] == 0 and p["delta_logit"] == 0 for p in result["sequences"][0]["predictions"])


def test_model_width_mismatch_names_both_widths(tiny_lm):
    narrow = D.create(D.make_config("sae_l1", d=16, n_latents=8), seed=0)
    with pytest.raises(ValueError, match=r"d=16.*'blocks.1.hook_resid_post' gives d=32"):
        ablate(tiny_lm, narrow, HOOK, [text_sequence(tiny_lm, TEXT)], [0])


def test_mean_mode_with_nothing_to_ablate_is_the_plain_splice(tiny_lm, sae):
    ids, mask = ids_and_mask(tiny_lm)
    plain = recorded_output(tiny_lm, ids, [(HOOK, Splice(sae, HOOK, with_error=True).for_mask(mask))])
    mean_mode = recorded_output(tiny_lm, ids, [(HOOK, Splice(sae, HOOK, with_error=True, mode="mean").for_mask(mask))])
    assert torch.equal(plain, mean_mode)


def test_max_norm_leaves_longer_activations_clean_and_splices_the_rest(tiny_lm, sae):
    ids, mask = ids_and_mask(tiny_lm)
    clean = recorded_output(tiny_lm, ids, [])
    norms = clean.norm(dim=-1)
    cap = float(norms[mask].median())
    long = mask & (norms > cap)
    assert long.any() and (mask & ~long).any()
    spliced = recorded_output(tiny_lm, ids, [(HOOK, Splice(sae, HOOK).for_mask(mask))])
    capped = recorded_output(tiny_lm, ids, [(HOOK, Splice(sae, HOOK, max_norm=cap).for_mask(mask))])
    assert torch.equal(capped[long | ~mask], clean[long | ~mask])
    assert torch.equal(capped[mask & ~long], spliced[mask & ~long])
    every = list(range(sae.config.n_latents))
    ablating = Splice(sae, HOOK, ablate=every, max_norm=cap)
    assert torch.equal(recorded_output(tiny_lm, ids, [(HOOK, ablating.for_mask(mask))])[long], clean[long])
    features = sae.encode(clean[long])
    assert features.any()
    torch.testing.assert_close(ablating.recorded()[long], features)  # not ablated there, still recorded


def test_loss_recovered_with_a_max_norm_below_every_activation_changes_nothing(tiny_lm, tiny_store, sae):
    result = loss_recovered(tiny_lm, sae, tiny_store, hook=HOOK, max_rows=4, max_norm=0.0)
    assert result["spliced_loss"] == result["clean_loss"] == result["zero_ablated_loss"]
    assert result["fraction_recovered"] is None and result["max_norm"] == 0.0


def test_splice_takes_the_norm_cap_the_dictionary_recorded(tiny_lm, sae):
    ids, mask = ids_and_mask(tiny_lm)
    clean = recorded_output(tiny_lm, ids, [])
    cap = float(clean.norm(dim=-1)[mask].median())
    explicit = recorded_output(tiny_lm, ids, [(HOOK, Splice(sae, HOOK, max_norm=cap).for_mask(mask))])
    sae.metadata["max_input_norm"] = cap
    try:
        recorded = recorded_output(tiny_lm, ids, [(HOOK, Splice(sae, HOOK).for_mask(mask))])
    finally:
        del sae.metadata["max_input_norm"]
    assert torch.equal(recorded, explicit)
