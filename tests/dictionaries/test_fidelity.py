"""Fidelity to the VAEase authors' code and to Gao et al.'s AuxK: the variational decoder and loss
in fp32 under bf16 autocast, 2-means on degenerate rows, AuxK's normalisation, and the synthetic
benchmark's authors' variants of AD and the AD–RE curve."""

import math

import pytest
import torch

import dictionaries as D
from benchmarks.synthetic_subspaces import authors_ad, one_sample_ad_re_curve

# --- 1. VAE/VAEase: decoder and loss in fp32 under bf16 autocast ------------------------------


def fp32_loss_from(model, mu, log_var, x, seed):
    """The VAE loss in float32 from given encoder outputs, drawing ε as the model does."""
    std = torch.exp(0.5 * log_var)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))
    z = mu + std * eps
    x_hat = model.decoder((1 - std) * z if model.gated else z)
    d, k = model.config.d, model.config.n_latents
    log_gamma = model.log_gamma
    return {
        "recon": (x - x_hat).pow(2).sum(-1).mean() / log_gamma.exp(),
        "log_gamma": d * log_gamma + d * math.log(2 * math.pi),
        "kl": (log_var.exp() + mu.pow(2) - log_var).sum(-1).mean() - k,
    }


@pytest.mark.parametrize("arch, encoder", [("vaease", "swish_split"), ("vaease", "mlp"), ("vae", "swish_split")])
def test_variational_decoder_and_loss_run_in_fp32_under_bf16_autocast(arch, encoder):
    model = D.create(D.make_config(arch, d=8, n_latents=6, encoder=encoder, encoder_layers=2), seed=0)
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1)) * 3
    dtypes = []
    model.decoder.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.loss(x, torch.Generator().manual_seed(2))
        mu, log_var = model._posterior(x)  # the same bf16-autocast encoder outputs
    assert dtypes == [torch.float32]
    assert all(t.dtype == torch.float32 for t in terms.values())
    expected = fp32_loss_from(model, mu, log_var, x, seed=2)  # γ = e^−10: recon ≈ 1e5
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=2e-6, atol=1e-5, msg=name)
    sum(terms.values()).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_sampled_code_decodes_to_the_sampled_reconstruction():
    model = D.create(D.make_config("vaease", d=5, n_latents=4), seed=0)
    model.input_scale.fill_(0.5)
    x = torch.randn(7, 5)
    code = model.sampled_code(x, torch.Generator().manual_seed(3))
    x_hat = model.sampled_reconstruction(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.decode(code), x_hat)


# --- 2. 2-means on a row whose values are all equal ------------------------------------------


def low(values, **kwargs):
    return D.two_means_low_mask(torch.tensor(values, dtype=torch.float32), **kwargs).tolist()


def test_degenerate_rows_are_decided_by_their_common_value():
    # log σ² all equal: active iff σ² < 0.5, i.e. log σ² < log 0.5 ≈ −0.693
    rows = [[-5.0] * 3, [0.0] * 3, [-0.5] * 3, [math.log(0.5) - 1e-3] * 3, [-9.0, -1.0, -9.0]]
    assert low(rows) == [[True] * 3, [False] * 3, [False] * 3, [True] * 3, [True, False, True]]


def test_degenerate_threshold_is_in_the_units_of_the_values():
    assert low([[-5.0, -5.0], [-7.0, -7.0]], degenerate_threshold=-6.0) == [[False, False], [True, True]]
    assert low([[2.0, 2.0]], degenerate_threshold=3.0) == [[True, True]]


def test_a_single_latent_is_a_degenerate_row():
    assert low([[-3.0], [0.0]]) == [[True], [False]]


def test_vaease_with_equal_small_variances_has_every_latent_active():
    model = D.create(D.make_config("vaease", d=2, n_latents=3, encoder="mlp", encoder_layers=1))
    with torch.no_grad():
        model.encoder[0].weight.zero_()
        model.encoder[0].bias.copy_(torch.tensor([0.5, -0.2, 1.0, -4.0, -4.0, -4.0]))  # μ, then log σ²
    x = torch.randn(5, 2)
    assert model.active_mask(x).sum(-1).tolist() == [3] * 5
    with torch.no_grad():
        model.encoder[0].bias[3:] = 0.0  # at the prior: nothing active
    assert model.active_mask(x).sum(-1).tolist() == [0] * 5


# --- 3. topk_aux: Gao et al.'s normalised AuxK -----------------------------------------------

X = [[1.0, 2.0], [-0.5, 0.25], [2.0, -1.0]]
W_ENC, B_ENC = [[1.0, -1.0], [0.5, 2.0], [0.3, 0.2]], [0.1, -0.3, 0.05]
W_DEC, B_DEC = [[2.0, -1.0, 0.7], [0.5, 1.5, -0.4]], [0.5, -0.25]  # W_DEC is [d, κ]


def topk_aux_model(**fields):
    model = D.create(D.make_config("topk_aux", d=2, n_latents=3, k=1, aux_k=1, dead_after_tokens=5, **fields))
    with torch.no_grad():
        model.encoder.weight.copy_(torch.tensor(W_ENC))
        model.encoder.bias.copy_(torch.tensor(B_ENC))
        model.decoder.weight.copy_(torch.tensor(W_DEC))
        model.decoder.bias.copy_(torch.tensor(B_DEC))
    model.train()
    return model


def hand_aux(alpha):
    """By hand: latent 2 is dead and never in a vector's top 1; latents 0 and 1 fire."""
    pre = [[sum(w * (xi - b) for w, xi, b in zip(row, x, B_DEC)) + be for row, be in zip(W_ENC, B_ENC)] for x in X]
    assert [max(range(3), key=lambda j: p[j]) for p in pre] == [1, 1, 0]
    x_hat = []
    for p in pre:
        j = max(range(3), key=lambda i: p[i])
        x_hat.append([W_DEC[r][j] * max(p[j], 0.0) + B_DEC[r] for r in range(2)])
    e = [[xi - hi for xi, hi in zip(x, xh)] for x, xh in zip(X, x_hat)]
    e_hat = [[W_DEC[r][2] * max(p[2], 0.0) for r in range(2)] for p in pre]  # decoder without bias
    numerator = sum((a - b) ** 2 for er, hr in zip(e, e_hat) for a, b in zip(er, hr))
    e_mean = [sum(er[r] for er in e) / 3 for r in range(2)]
    denominator = sum((er[r] - e_mean[r]) ** 2 for er in e for r in range(2))
    x_mean = [sum(x[r] for x in X) / 3 for r in range(2)]
    variance = sum((x[r] - x_mean[r]) ** 2 for x in X for r in range(2)) / 3  # V, in recon's units
    recon = sum(er[0] ** 2 + er[1] ** 2 for er in e) / 3
    return alpha * numerator / denominator * variance, recon


def test_topk_aux_term_is_gao_et_als_normalised_auxk():
    model = topk_aux_model(aux_coefficient=1 / 32)
    # latents 1 and 2 are past the threshold, but latent 1 fires in this batch: only 2 is dead
    model.tokens_since_fired.copy_(torch.tensor([0, 10, 10]))
    terms = model.loss(torch.tensor(X))
    aux, recon = hand_aux(1 / 32)
    assert terms["recon"].item() == pytest.approx(recon, rel=1e-6)
    assert terms["aux"].item() == pytest.approx(aux, rel=1e-5)
    assert model.tokens_since_fired.tolist() == [0, 0, 13]


def test_topk_aux_gradient_reaches_only_dead_latents():
    model = topk_aux_model()
    model.tokens_since_fired.copy_(torch.tensor([0, 10, 10]))
    model.loss(torch.tensor(X))["aux"].backward()
    enc_w, enc_b, dec_w = model.encoder.weight.grad, model.encoder.bias.grad, model.decoder.weight.grad
    assert bool((enc_w[:2] == 0).all() and (enc_b[:2] == 0).all() and (dec_w[:, :2] == 0).all())
    assert bool((enc_w[2] != 0).all() and enc_b[2] != 0 and (dec_w[:, 2] != 0).all())
    # b_dec only through the dead latent's pre-activation W_e[2]·(x − b_dec)
    torch.testing.assert_close(model.decoder.bias.grad, -enc_b[2] * model.encoder.weight[2].detach())


def test_topk_aux_term_is_zero_without_dead_latents():
    model = topk_aux_model()
    terms = model.loss(torch.tensor(X))
    assert terms["aux"].item() == 0.0
    assert not terms["aux"].requires_grad  # no latent can be dead: the sparse path skips AuxK


# --- 5. synthetic benchmark: the authors' AD and one-sample AD–RE ---------------------------


def test_authors_ad_splits_each_subspaces_mean_log_variance():
    log_var = torch.tensor(
        [
            [-8.0, 0.0, -6.0, 0.0],  # subspace 0
            [-6.0, 0.0, -6.0, -0.2],  # subspace 0: mean [-7, 0, -6, -0.1] → low group {0, 2}
            [-5.0, -5.0, -5.0, -5.0],  # subspace 1: all equal and σ² < 0.5 → all κ active
            [0.0, -9.0, 0.0, 0.0],  # subspace 2
        ]
    )
    assert authors_ad(log_var, torch.tensor([0, 0, 1, 2]), 3) == [2, 4, 1]


def test_one_sample_curve_decodes_one_sample_and_ends_at_the_sampled_reconstruction():
    model = D.create(D.make_config("vaease", d=6, n_latents=5, encoder="mlp", encoder_layers=2), seed=0)
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(4))
    curve = one_sample_ad_re_curve(model, x, torch.Generator().manual_seed(5))
    assert [k for k, _ in curve] == [1, 2, 3, 4, 5]
    with torch.no_grad():
        full = model.sampled_reconstruction(x, torch.Generator().manual_seed(5))
        code = model.sampled_code(x, torch.Generator().manual_seed(5))
        keep = model.activity_score(x).argsort(-1, descending=True)[:, :2]
        two = model.decode(torch.zeros_like(code).scatter(-1, keep, code.gather(-1, keep)))
    assert curve[-1][1] == pytest.approx(float((x - full).pow(2).sum(-1).mean()), rel=1e-5)
    assert curve[1][1] == pytest.approx(float((x - two).pow(2).sum(-1).mean()), rel=1e-5)
    assert curve != D.ad_re_curve(model, x)  # not the deterministic decode
