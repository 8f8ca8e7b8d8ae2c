"""Weight estimators for the weighted SAE and user weight files."""

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

import dictionaries as D
from dictionaries import weights


def superposed_sample(n=20000, seed=0):
    """Dimension 0 carries one sparse feature; dimension 1 the sum of eight."""
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(n, 9, generator=g) * (torch.rand(n, 9, generator=g) < 0.05)
    return torch.stack([features[:, 0], features[:, 1:].sum(-1)], dim=1)


@pytest.mark.parametrize("estimator", ["inverse_variance", "kurtosis", "hoyer"])
def test_estimators_favour_the_monosemantic_dimension(estimator):
    weights = D.estimate_weights(superposed_sample(), estimator)
    assert weights.mean() == pytest.approx(1.0) and weights[0] > weights[1]


def test_uniform_is_ones_and_alpha_sharpens():
    sample = superposed_sample()
    assert torch.equal(D.estimate_weights(sample, "uniform"), torch.ones(2))
    half, full = D.estimate_weights(sample, "kurtosis", 0.5), D.estimate_weights(sample, "kurtosis", 1.0)
    assert full[0] / full[1] == pytest.approx(float(half[0] / half[1]) ** 2, rel=1e-4)


def test_inverse_variance_by_hand():
    sample = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # variances 2 and 8 → scores 1/2, 1/8
    assert D.estimate_weights(sample, "inverse_variance").tolist() == pytest.approx([1.6, 0.4])


def test_unknown_estimator():
    with pytest.raises(ValueError, match="unknown weight estimator 'magic'"):
        D.estimate_weights(torch.zeros(4, 2), "magic")


def test_weights_files(tmp_path):
    save_file({"weights": torch.tensor([1.0, 3.0])}, tmp_path / "w.safetensors")
    (tmp_path / "w.json").write_text(json.dumps({"weights": [1, 3]}))
    (tmp_path / "list.json").write_text("[1, 3]")
    for name in ("w.safetensors", "w.json", "list.json"):
        assert D.load_weights_file(tmp_path / name, 2).tolist() == [0.5, 1.5]
    with pytest.raises(ValueError, match=r"shape \(2,\), the dictionary needs \(3,\)"):
        D.load_weights_file(tmp_path / "w.json", 3)
    (tmp_path / "bad.json").write_text("[1, -3]")
    with pytest.raises(ValueError, match="non-negative"):
        D.load_weights_file(tmp_path / "bad.json", 2)


def test_wsae_prepare_uses_its_estimator_or_file(tmp_path):
    sample = superposed_sample()
    model = D.create(D.make_config("wsae", d=2, n_latents=4, estimator="hoyer", alpha=0.5))
    model.prepare(sample)
    assert torch.equal(model.reconstruction_weights, D.estimate_weights(sample, "hoyer", 0.5))
    (tmp_path / "w.json").write_text("[2, 6]")
    model = D.create(D.make_config("wsae", d=2, n_latents=4, estimator="file", weights_file=str(tmp_path / "w.json")))
    model.prepare(sample)
    assert model.reconstruction_weights.tolist() == [0.5, 1.5]


def test_wsae_config_validation():
    with pytest.raises(ValueError, match="needs weights_file"):
        D.make_config("wsae", d=2, n_latents=4, estimator="file")
    with pytest.raises(ValueError, match="unknown estimator"):
        D.make_config("wsae", d=2, n_latents=4, estimator="nope")


ALL_ESTIMATORS = sorted(D.ESTIMATORS)


def with_degenerate_dimensions(sample, seed=1):
    """Append an exactly constant dimension and a near-constant one (std 1e-5 of the others)."""
    n = sample.shape[0]
    noise = 1e-5 * sample[:, :1].std() * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))
    return torch.cat([sample, torch.full((n, 1), 3.0), 7.0 + noise], dim=1)


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS)
def test_constant_dimensions_get_the_median_weight(estimator):
    sample = with_degenerate_dimensions(superposed_sample())
    gamma = D.estimate_weights(sample, estimator)
    assert gamma.shape == (4,) and torch.isfinite(gamma).all() and gamma.mean() == pytest.approx(1.0)
    # the live dimensions keep their estimator's weights (up to the mean-1 rescaling) ...
    live = D.estimate_weights(sample[:, :2], estimator)
    assert (gamma[:2] / gamma[:2].mean()).tolist() == pytest.approx(live.tolist(), rel=1e-5)
    # ... and both degenerate ones get their median, not an extreme
    assert gamma[2:].tolist() == pytest.approx([float(gamma[:2].double().quantile(0.5))] * 2, rel=1e-5)


def test_degenerate_dimensions_mask():
    sample = with_degenerate_dimensions(superposed_sample())
    assert weights.degenerate_dimensions(sample).tolist() == [False, False, True, True]
    assert weights.degenerate_dimensions(torch.ones(5, 3)).tolist() == [True] * 3
    assert D.estimate_weights(torch.ones(5, 3), "kurtosis").tolist() == [1.0, 1.0, 1.0]


def test_weight_spread_by_hand():
    # γ = (1, 1, 2, 4): Σγ = 8, Σγ² = 22 → (Σγ)²/Σγ² = 64/22; scale-free
    for scale in (1.0, 0.25):
        spread = weights.weight_spread(scale * torch.tensor([1.0, 1.0, 2.0, 4.0]))
        assert spread == pytest.approx({"min": scale, "max": 4 * scale, "effective_dims": 64 / 22, "d": 4.0})
    assert weights.weight_spread(torch.ones(6))["effective_dims"] == pytest.approx(6.0)
    assert weights.weight_spread(torch.tensor([0.0, 0.0, 5.0]))["effective_dims"] == pytest.approx(1.0)


def test_concentrated_weights_warn():
    sample = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    sample[:5, 0] = 200.0  # one massive-activation dimension: huge kurtosis
    with pytest.warns(UserWarning, match=r"'kurtosis' \(alpha=1.0\).* of d=16, below d/4 = 4"):
        gamma = D.estimate_weights(sample, "kurtosis", 1.0)
    assert weights.weight_spread(gamma)["effective_dims"] < 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rank variant stays spread out: no warning
        ranked = D.estimate_weights(sample, "kurtosis_rank", 1.0)
    assert ranked.argmax() == 0 and weights.weight_spread(ranked)["effective_dims"] > 12


def test_concentrated_weights_file_warns(tmp_path):
    (tmp_path / "w.json").write_text(json.dumps([100.0] + [1.0] * 7))
    with pytest.warns(UserWarning, match=r"weights file .* of d=8, below d/4 = 2"):
        D.load_weights_file(tmp_path / "w.json", 8)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
@pytest.mark.parametrize("estimator", ["inverse_variance_rank", "kurtosis_rank", "hoyer_rank"])
def test_rank_estimators_bound_the_ratio_and_keep_the_order(estimator, alpha):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(4000, 12, generator=g) * torch.logspace(-2, 2, 12)  # variances over 8 decades
    sample[:3, 5] = 1e4  # and a massive activation
    gamma = D.estimate_weights(sample, estimator, alpha)
    assert float(gamma.max() / gamma.min()) == pytest.approx(weights.RANK_RANGE**alpha, rel=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the base estimator concentrates (that is the point)
        base = D.estimate_weights(sample, estimator.removesuffix("_rank"), alpha)
    assert torch.equal(gamma.argsort(), base.argsort())


def test_rank_scores_by_hand():
    ranked = weights.rank_scores(torch.tensor([5.0, 1.0, 5.0, 3.0, 100.0], dtype=torch.float64))
    # ranks 2.5, 0, 2.5, 1, 4 of 4 → 1 + 3·r/4
    assert ranked.tolist() == pytest.approx([2.875, 1.0, 2.875, 1.75, 4.0])


def test_wsae_reports_the_weight_spread_with_its_metrics(tmp_path):
    sample = superposed_sample()
    model = D.create(D.make_config("wsae", d=2, n_latents=4, estimator="kurtosis"))
    model.prepare(sample)
    spread = weights.weight_spread(model.reconstruction_weights)
    report = D.evaluate(model, D.TensorBatchSource(sample, 64, shuffle=False))
    assert report["weight_effective_dims"] == spread["effective_dims"]
    assert (report["weight_min"], report["weight_max"]) == (spread["min"], spread["max"])
    D.save_dictionary(model, tmp_path / "m")
    assert D.load_dictionary(tmp_path / "m").report_extras() == model.report_extras()  # from the saved Γ


@pytest.mark.parametrize("plain, encoder", [("sae_l1", "relu"), ("sae_topk", "topk")])
def test_uniform_wsae_prepared_on_degenerate_data_is_the_plain_sae(plain, encoder):
    """Γ = I reproduces the plain SAE exactly, also after `prepare` (with λ₂ = 0 on both sides)."""
    sample = with_degenerate_dimensions(torch.randn(256, 6, generator=torch.Generator().manual_seed(3)))
    extra = {"k": 3} if encoder == "topk" else {"decoder_l2_coefficient": 0.0}
    reference = D.create(D.make_config(plain, d=8, n_latents=16, **extra), seed=0)
    weighted = D.create(D.make_config("wsae", d=8, n_latents=16, encoder=encoder, estimator="uniform", **extra), seed=0)
    weighted.prepare(sample)
    assert torch.equal(weighted.reconstruction_weights, torch.ones(8))
    a, b = reference.loss(sample), weighted.loss(sample)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    if encoder == "relu":
        assert b["decoder_l2"].item() == 0.0
    sum(a.values()).backward()
    sum(b.values()).backward()
    for (name, p), q in zip(reference.named_parameters(), weighted.parameters()):
        assert torch.equal(p.grad, q.grad), name
