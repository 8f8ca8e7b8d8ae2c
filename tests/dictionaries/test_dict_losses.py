"""Each architecture's loss terms against a hand computation on tiny tensors."""

import math

import pytest
import torch

import dictionaries as D
from dictionaries.sae import l1_penalty


def set_linear(layer, weight, bias):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def matvec(w, v):
    return [sum(wi * vi for wi, vi in zip(row, v)) for row in w]


def swish(t):
    return t / (1 + math.exp(-t))


def close(terms, expected, rel=1e-6):
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].detach().item() == pytest.approx(value, rel=rel, abs=1e-6), name


X = [[1.0, 2.0], [-0.5, 0.25]]
W_DEC = [[2.0, -1.0], [0.5, 1.5]]  # [d, κ]
B_DEC = [0.5, -0.25]


def sae_codes(pre):
    return [[max(p, 0.0) for p in row] for row in pre]


def sq_err(x, x_hat, weights=(1.0, 1.0)):
    return sum(w * (a - b) ** 2 for w, a, b in zip(weights, x, x_hat))


def decode(z):
    return [v + b for v, b in zip(matvec(W_DEC, z), B_DEC)]


W_ENC, B_ENC = [[1.0, -1.0], [0.5, 2.0]], [0.1, -0.3]


def sae_model(arch, **fields):
    model = D.create(D.make_config(arch, d=2, n_latents=2, **fields))
    set_linear(model.encoder, W_ENC, B_ENC)
    set_linear(model.decoder, W_DEC, B_DEC)
    return model


def hand_pre():
    return [[p + b for p, b in zip(matvec(W_ENC, x), B_ENC)] for x in X]


DEC_L2 = sum(w * w for row in W_DEC for w in row) + sum(b * b for b in B_DEC)


def test_sae_l1():
    z = sae_codes(hand_pre())
    recon = sum(sq_err(x, decode(zi)) for x, zi in zip(X, z)) / 2
    l1 = sum(abs(v) for zi in z for v in zi) / 2
    terms = sae_model("sae_l1", l1_coefficient=0.3, decoder_l2_coefficient=0.2).loss(torch.tensor(X))
    close(terms, {"recon": recon, "sparsity": 0.3 * l1, "decoder_l2": 0.2 * DEC_L2})


def test_l1_penalty_of_a_relu_code_is_its_mean_absolute_sum_with_the_same_gradient():
    pre = torch.tensor([[1.5, -2.0, 0.0, 0.25], [-1.0, 3.0, 0.5, -0.5]], requires_grad=True)
    penalty = l1_penalty(torch.relu(pre))
    assert penalty.item() == (1.5 + 0.25 + 3.0 + 0.5) / 2
    (grad,) = torch.autograd.grad(penalty, pre)
    assert grad.tolist() == [[0.5, 0.0, 0.0, 0.5], [0.0, 0.5, 0.5, 0.0]]  # 1/B where pre > 0
    in_bf16 = l1_penalty(torch.relu(pre.detach()).bfloat16())
    assert in_bf16.dtype == torch.float32 and in_bf16.item() == penalty.item()


def test_sae_log():
    z = sae_codes(hand_pre())
    recon = sum(sq_err(x, decode(zi)) for x, zi in zip(X, z)) / 2
    log = sum(math.log(abs(v) + 1e-3) for zi in z for v in zi) / 2
    model = sae_model("sae_log", log_coefficient=0.01, log_eps=1e-3, decoder_l2_coefficient=0.2)
    close(model.loss(torch.tensor(X)), {"recon": recon, "sparsity": 0.01 * log, "decoder_l2": 0.2 * DEC_L2})


def test_sae_topk_keeps_the_largest():
    pre = hand_pre()
    z = [[v if v == max(row) and v > 0 else 0.0 for v in row] for row in pre]
    recon = sum(sq_err(x, decode(zi)) for x, zi in zip(X, z)) / 2
    model = sae_model("sae_topk", k=1)
    close(model.loss(torch.tensor(X)), {"recon": recon})
    assert model.encode(torch.tensor(X)).flatten().tolist() == pytest.approx([v for row in z for v in row])


@pytest.mark.parametrize("encoder", ["relu", "topk"])
def test_wsae_weights_the_reconstruction(encoder):
    weights = (2.0, 0.5)
    pre = hand_pre()
    z = sae_codes(pre) if encoder == "relu" else [[v if v == max(r) and v > 0 else 0.0 for v in r] for r in pre]
    recon = sum(sq_err(x, decode(zi), weights) for x, zi in zip(X, z)) / 2
    model = sae_model("wsae", encoder=encoder, k=1, l1_coefficient=0.3, decoder_l2_coefficient=0.2)
    model.reconstruction_weights.copy_(torch.tensor(weights))
    expected = {"recon": recon}
    if encoder == "relu":
        expected |= {"sparsity": 0.3 * sum(abs(v) for zi in z for v in zi) / 2, "decoder_l2": 0.2 * DEC_L2}
    close(model.loss(torch.tensor(X)), expected)


@pytest.mark.parametrize("plain, encoder", [("sae_l1", "relu"), ("sae_topk", "topk")])
def test_wsae_with_identity_weights_is_the_plain_sae(plain, encoder):
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    reference = D.create(D.make_config(plain, d=8, n_latents=16, **({"k": 3} if encoder == "topk" else {})))
    weighted = D.create(D.make_config("wsae", d=8, n_latents=16, encoder=encoder, k=3))
    weighted.load_state_dict(reference.state_dict() | {"reconstruction_weights": torch.ones(8)})
    a, b = reference.loss(x), weighted.loss(x)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    sum(a.values()).backward()
    sum(b.values()).backward()
    for (name, p), q in zip(reference.named_parameters(), weighted.parameters()):
        assert torch.equal(p.grad, q.grad), name


def test_topk_aux_reconstructs_the_residual_with_dead_latents():
    model = sae_model("topk_aux", k=1, aux_k=1, aux_coefficient=0.5, dead_after_tokens=3)
    # latent 0 never wins the top 1 below, so it stays dead (counters are updated with the batch
    # before the dead set is chosen, as Gao et al.'s code does)
    model.tokens_since_fired.copy_(torch.tensor([4, 0]))
    # pre-activations use x − b_dec
    pre = [[p + b for p, b in zip(matvec(W_ENC, [xi - bi for xi, bi in zip(x, B_DEC)]), B_ENC)] for x in X]
    z = [[v if v == max(r) and v > 0 else 0.0 for v in r] for r in pre]
    x_hat = [decode(zi) for zi in z]
    residual = [[xi - hi for xi, hi in zip(x, xh)] for x, xh in zip(X, x_hat)]
    aux = 0.0
    for e, p in zip(residual, pre):
        a = max(p[0], 0.0)  # only the dead latent may reconstruct the residual; no bias
        aux += sq_err(e, [W_DEC[0][0] * a, W_DEC[1][0] * a])
    # Gao et al.'s normalisation: by the residual's spread, times the data's (recon's units)
    spread = sum(sq_err(e, [sum(r[i] for r in residual) / 2 for i in range(2)]) for e in residual)
    variance = sum(sq_err(x, [sum(r[i] for r in X) / 2 for i in range(2)]) for x in X) / 2
    recon = sum(sq_err(x, xh) for x, xh in zip(X, x_hat)) / 2
    model.train()
    close(model.loss(torch.tensor(X)), {"recon": recon, "aux": 0.5 * aux / spread * variance}, rel=1e-5)
    fired = [any(zi[j] > 0 for zi in z) for j in range(2)]
    assert fired == [False, True]
    assert model.tokens_since_fired.tolist() == [0 if f else s + 2 for f, s in zip(fired, [4, 0])]


def test_topk_aux_keeps_unit_norm_decoder_columns():
    model = D.create(D.make_config("topk_aux", d=6, n_latents=10, k=2), seed=0)
    with torch.no_grad():
        model.decoder.weight.mul_(3)
    model.after_optimizer_step()
    assert torch.allclose(model.decoder.weight.norm(dim=0), torch.ones(10))


def vae_model(arch):
    model = D.create(D.make_config(arch, d=2, n_latents=1, init_log_gamma=0.3))
    set_linear(model.encoder, [[1.0, 0.0], [0.5, -1.0]], [0.0, 0.2])
    set_linear(model.variance_head, [[-2.0]], [0.4])
    set_linear(model.decoder, [[2.0], [-1.0]], [0.5, 0.0])
    return model


@pytest.mark.parametrize("arch", ["vaease", "vae"])
def test_vae_loss_terms(arch):
    eps = torch.randn(2, 1, generator=torch.Generator().manual_seed(7))[:, 0].tolist()
    log_gamma, d, kappa = 0.3, 2, 1
    recon = kl = 0.0
    for x, e in zip(X, eps):
        h = [swish(v) for v in [x[0], 0.5 * x[0] - x[1] + 0.2]]
        mu = h[0]
        var = 1 / (1 + math.exp(-(-2.0 * h[1] + 0.4)))
        std = math.sqrt(var)
        z = mu + std * e
        z_in = (1 - std) * z if arch == "vaease" else z
        x_hat = [2.0 * z_in + 0.5, -1.0 * z_in]
        recon += sq_err(x, x_hat) / math.exp(log_gamma)
        kl += var + mu**2 - math.log(var) - kappa
    expected = {"recon": recon / 2, "log_gamma": d * log_gamma + d * math.log(2 * math.pi), "kl": kl / 2}
    close(vae_model(arch).loss(torch.tensor(X), torch.Generator().manual_seed(7)), expected, rel=1e-5)


def test_vaease_deterministic_code_is_the_gated_mean():
    model = vae_model("vaease")
    x = torch.tensor(X)
    std = model.latent_log_variance(x).mul(0.5).exp()
    mu = torch.nn.functional.silu(model.encoder(x))[:, :1]
    assert torch.allclose(model.encode(x), (1 - std) * mu)
    assert torch.allclose(vae_model("vae").encode(x), mu)


@pytest.mark.parametrize("encoder", ["swish_split", "mlp"])
def test_vaease_gate_stays_in_unit_interval(encoder):
    model = D.create(D.make_config("vaease", d=8, n_latents=16, encoder=encoder, encoder_layers=3), seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50)  # push pre-activations to both extremes
    x = torch.randn(256, 8) * 100
    gate = 1 - model.latent_log_variance(x).mul(0.5).exp()
    assert gate.min() >= 0 and gate.max() <= 1
    assert gate.min() == 0  # σ reaches the prior (σ = 1) somewhere: the gate closes fully


def test_mlp_encoder_clamps_log_variance_at_zero():
    model = D.create(D.make_config("vaease", d=2, n_latents=1, encoder="mlp", encoder_layers=1))
    set_linear(model.encoder[0], [[0.0, 0.0], [0.0, 0.0]], [0.7, 3.0])  # μ = 0.7, log σ² = 3 → 0
    x = torch.tensor(X)
    assert model.latent_log_variance(x).tolist() == [[0.0], [0.0]]
    assert model.encode(x).tolist() == [[0.0], [0.0]]  # σ = 1 silences the latent


def test_input_scale_is_applied_inside():
    model = sae_model("sae_l1")
    x = torch.tensor(X)
    unscaled_loss, unscaled_code = model.loss(x), model.encode(2 * x)
    model.input_scale.fill_(2.0)
    assert torch.equal(model.encode(x), unscaled_code)
    assert torch.allclose(model(x), model.decoder(unscaled_code) / 2)
    assert torch.equal(model.loss(x / 2)["recon"], unscaled_loss["recon"])
