"""Metrics: the 2-means split and its edge cases, RE/FVU/AD/dead/dense, the AD–RE curve."""

import pytest
import torch

import dictionaries as D


def low(values):
    return D.two_means_low_mask(torch.tensor(values, dtype=torch.float32)).tolist()


def test_two_means_splits_at_the_gap():
    assert low([[-9.0, 0.0, -8.5, 0.1, -0.2]]) == [[True, False, True, False, False]]


def test_two_means_minimises_within_group_variance_by_brute_force():
    values = torch.randn(50, 9, generator=torch.Generator().manual_seed(0))
    mask = D.two_means_low_mask(values)
    for row, row_mask in zip(values, mask):
        s = row.double().sort().values
        costs = [s[:k].var(unbiased=False) * k + s[k:].var(unbiased=False) * (9 - k) for k in range(1, 9)]
        best = min(range(8), key=lambda i: costs[i]) + 1
        assert int(row_mask.sum()) == best


def test_two_means_with_exact_zeros():
    # σ² = 1 exactly for inactive latents: log σ² is exactly 0
    assert low([[0.0, 0.0, -12.0, 0.0, -11.0]]) == [[False, False, True, False, True]]
    assert low([[0.0, 0.0, 0.0, -3.0]]) == [[False, False, False, True]]


def test_two_means_all_equal_is_decided_by_the_common_value():
    # no split: all active iff σ² < 0.5 (log σ² < log 0.5), as the authors' code counts κ
    assert low([[0.0, 0.0, 0.0], [-5.0, -5.0, -5.0]]) == [[False] * 3, [True] * 3]


def test_two_means_two_distinct_values():
    assert low([[2.0, 1.0, 2.0, 2.0]]) == [[False, True, False, False]]


def sae_with_codes():
    """sae_l1 with identity encoder/decoder and no bias: code = relu(x), x̂ = relu(x)."""
    model = D.create(D.make_config("sae_l1", d=3, n_latents=3))
    with torch.no_grad():
        model.encoder.weight.copy_(torch.eye(3))
        model.decoder.weight.copy_(torch.eye(3))
        model.encoder.bias.zero_()
        model.decoder.bias.zero_()
    return model


def test_evaluate_sae_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, -1.0], [0.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
    report = D.evaluate(sae_with_codes(), D.TensorBatchSource(x, 2, shuffle=False), dense_threshold=0.5)
    # errors: negative entries are lost
    sse = [4.0, 1.0, 0.0, 0.0]
    assert report["re_deterministic"] == pytest.approx(sum(sse) / 4)
    total = float(((x - x.mean(0)) ** 2).sum())
    assert report["fvu_deterministic"] == pytest.approx(sum(sse) / total)
    l0 = [1, 2, 1, 2]
    assert report["ad_method"] == "l0" and report["ad_mean"] == report["l0_mean"] == pytest.approx(1.5)
    assert report["ad_std"] == pytest.approx(0.5)
    # latent firing counts: [3, 2, 1] of 4 → none dead; dense (> 0.5): latent 0 only
    assert report["dead_fraction"] == 0.0 and report["dense_fraction"] == pytest.approx(1 / 3)
    assert report["n_vectors"] == 4 and sum(l0) == 6


def test_evaluate_counts_dead_latents_and_caps_vectors():
    x = torch.tensor([[1.0, -1.0, -1.0]] * 10)
    report = D.evaluate(sae_with_codes(), D.TensorBatchSource(x, 4, shuffle=False, drop_last=False), max_vectors=6)
    assert report["n_vectors"] == 6 and report["dead_fraction"] == pytest.approx(2 / 3)


def test_evaluate_variational_names_its_variants():
    model = D.create(D.make_config("vaease", d=4, n_latents=6), seed=0)
    report = D.evaluate(model, D.TensorBatchSource(torch.randn(20, 4), 5), generator=torch.Generator().manual_seed(0))
    assert report["ad_method"] == "two_means_log_variance"
    assert {"re_sample", "gamma", "re_deterministic"} <= set(report) and "l0_mean" not in report
    assert report["gamma"] == pytest.approx(torch.tensor(-10.0).exp().item())


def test_ad_re_curve_keeps_the_most_active_latents():
    model = sae_with_codes()
    x = torch.tensor([[3.0, 1.0, 2.0]])
    # keep 3 → error 0; keep 1 (the 3) → 1² + 2²; keep 2 (3 and 2) → 1²
    assert D.ad_re_curve(model, x) == [(1, 5.0), (2, 1.0), (3, 0.0)]
    assert D.ad_re_curve(model, x, max_k=2) == [(1, 5.0), (2, 1.0)]


def test_ad_re_curve_variational_ranks_by_smallest_variance():
    model = D.create(D.make_config("vaease", d=4, n_latents=5), seed=0)
    x = torch.randn(8, 4)
    curve = D.ad_re_curve(model, x)
    assert curve[-1][1] == pytest.approx(float(((x - model(x)) ** 2).sum(-1).mean().detach()), rel=1e-5)
    assert torch.equal(model.activity_score(x), -model.latent_log_variance(x))


def test_active_mask_matches_ad():
    model = D.create(D.make_config("sae_topk", d=5, n_latents=8, k=3), seed=0)
    x = torch.randn(10, 5)
    positive = (model.encoder(x) > 0).sum(-1).clamp(max=3)  # TopK keeps ≤ k positive latents
    assert torch.equal(model.active_mask(x).sum(-1), positive)


def test_ad_re_curve_is_flat_past_the_last_active_latent_and_ends_at_the_full_decode():
    model = D.create(D.make_config("sae_topk", d=6, n_latents=10, k=2), seed=0)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    curve = D.ad_re_curve(model, x)
    assert [k for k, _ in curve] == list(range(1, 11))
    assert all(re == curve[1][1] for _, re in curve[2:])  # at most 2 latents are active per vector
    full = float(((x - model(x).detach()) ** 2).sum(-1).mean())
    assert curve[-1][1] == pytest.approx(full, rel=1e-5)
