"""features_on_text on the tiny model, checked against the same computation done by hand."""

import pytest
import torch
from conftest import HOOK

import dictionaries as D
from interp_sae.ablation import text_sequence
from interp_sae.errors import ConfigError
from interp_sae.text_features import features_on_text

TEXT = "The quick brown fox jumps over the lazy dog."


@torch.no_grad()
def by_hand(lm, dictionary, text, top_n, rank_by):
    """Per-token features and the text's top features, straight from the cache and `encode`."""
    ids, _ = text_sequence(lm, text)
    _, cache = lm.bridge.run_with_cache(torch.tensor([ids]), names_filter=lambda n: n == HOOK)
    x = cache[HOOK][0, 1:]
    values = dictionary.encode(x)
    fires = dictionary.active_mask(x)
    if rank_by == "one_minus_sigma":
        scores = 1 - torch.exp(0.5 * dictionary.latent_log_variance(x))
    else:
        scores = values.abs()
    per_token = []
    for t in range(len(x)):
        firing = [j for j in range(values.shape[1]) if fires[t, j]]
        best = sorted(firing, key=lambda j: (-float(scores[t, j]), j))[:top_n]
        per_token.append([(j, float(values[t, j])) for j in best])
    best_score = {
        j: max(float(scores[t, j]) for t in range(len(x)) if fires[t, j])
        for j in range(values.shape[1])
        if fires[:, j].any()
    }
    top = sorted(best_score, key=lambda j: (-best_score[j], j))[:top_n]
    top_features = []
    for j in top:
        position = next(t for t in range(len(x)) if fires[t, j] and float(scores[t, j]) == best_score[j])
        top_features.append((j, float(values[position, j]), position, int(fires[:, j].sum())))
    return per_token, top_features, values, fires


@pytest.mark.parametrize(("architecture", "rank_by"), [("sae", None), ("vaease", None), ("vaease", "one_minus_sigma")])
def test_features_on_text_equal_the_computation_by_hand(tiny_lm, sae, vaease, architecture, rank_by):
    dictionary = sae if architecture == "sae" else vaease
    result = features_on_text(tiny_lm, dictionary, TEXT, hook=HOOK, top_n=4, rank_by=rank_by)
    per_token, top_features, values, fires = by_hand(tiny_lm, dictionary, TEXT, 4, rank_by)

    assert result["rank_by"] == (rank_by or "abs") and result["architecture"] == dictionary.architecture
    assert result["hook"] == HOOK and result["model"] == "tiny-pythia" and result["text"] == TEXT
    assert "".join(result["tokens"]) == TEXT  # BOS is not shown: the tokens round-trip to the text
    assert len(result["per_token"]) == len(result["tokens"]) == len(values)
    for i, (row, expected) in enumerate(zip(result["per_token"], per_token)):
        assert row["position"] == i and row["token"] == result["tokens"][i]
        assert [f["feature"] for f in row["features"]] == [j for j, _ in expected]
        assert [f["activation"] for f in row["features"]] == pytest.approx([v for _, v in expected], abs=1e-6)

    assert [f["feature"] for f in result["top_features"]] == [j for j, *_ in top_features]
    for got, (j, peak, position, count) in zip(result["top_features"], top_features):
        assert (got["max_position"], got["count"]) == (position, count)
        assert got["max"] == pytest.approx(peak, abs=1e-6)
        assert got["sum"] == pytest.approx(float(values[fires[:, j], j].sum()), abs=1e-5)
        assert result["activations"][str(j)] == pytest.approx(values[:, j].tolist(), abs=1e-6)
    assert set(result["activations"]) == {str(j) for j, *_ in top_features}


def test_only_firing_features_are_listed(tiny_lm):
    """An SAE whose encoder bias silences all but features 0 and 1 lists only those two."""
    sae = D.create(D.make_config("sae_l1", d=32, n_latents=8), seed=0)
    with torch.no_grad():
        sae.encoder.weight.zero_()
        sae.encoder.bias.copy_(torch.tensor([2.0, 3.0, -1, -1, -1, -1, -1, -1]))
    result = features_on_text(tiny_lm, sae, TEXT, hook=HOOK, top_n=5)
    for row in result["per_token"]:
        assert row["features"] == [{"feature": 1, "activation": 3.0}, {"feature": 0, "activation": 2.0}]
    n = len(result["tokens"])
    assert result["top_features"] == [
        {"feature": 1, "max": 3.0, "max_position": 0, "sum": 3.0 * n, "count": n},
        {"feature": 0, "max": 2.0, "max_position": 0, "sum": 2.0 * n, "count": n},
    ]


def test_the_recorded_hook_is_the_default(tiny_lm, sae_folder, tmp_path):
    recorded = D.save_dictionary(D.load_dictionary(sae_folder), tmp_path / "d", metadata={"hook_name": HOOK})
    result = features_on_text(tiny_lm, D.load_dictionary(recorded), TEXT, top_n=2)
    assert result["hook"] == HOOK


def test_a_text_longer_than_the_context_is_refused(tiny_lm, sae):
    long_text = "The quick brown fox. " * 100
    assert len(tiny_lm.tokenize([long_text])[0]) + 1 > tiny_lm.n_ctx
    with pytest.raises(ConfigError, match=f"more than the model's context of {tiny_lm.n_ctx}"):
        features_on_text(tiny_lm, sae, long_text, hook=HOOK)


def test_a_hook_the_model_lacks_or_of_another_width_is_refused(tiny_lm, sae):
    with pytest.raises(ConfigError, match=r"no hook 'blocks\.9\.hook_resid_post'.*blocks\.1\.hook_resid_post"):
        features_on_text(tiny_lm, sae, TEXT, hook="blocks.9.hook_resid_post")
    wide = D.create(D.make_config("sae_l1", d=48, n_latents=8), seed=0)
    with pytest.raises(ConfigError, match="width mismatch: the dictionary takes d=48"):
        features_on_text(tiny_lm, wide, TEXT, hook=HOOK)
    with pytest.raises(ConfigError, match="records no hook"):
        features_on_text(tiny_lm, sae, TEXT)
