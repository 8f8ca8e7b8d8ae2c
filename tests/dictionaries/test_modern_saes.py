"""BatchTopK, JumpReLU, Matryoshka BatchTopK and Gated SAEs, and the shared AuxK loss."""

from __future__ import annotations

import copy
import json
import math
import re

import pytest
import torch

import dictionaries as D
import dictionaries.auxk as auxk_module
import dictionaries.jumprelu as jumprelu_module
from dictionaries.auxk import AuxKSAE, auxk_loss
from dictionaries.jumprelu import jumprelu_ste, step_ste
from dictionaries.sparse_topk import batch_topk, dense_from_sparse, row_layout
from interp_sae.errors import ConfigError

d, KAPPA, K = 16, 64, 4
MODERN = {  # name -> config fields beyond d and n_latents
    "batchtopk": {"k": K, "threshold_beta": 0.9},
    "jumprelu": {"l0_coefficient": 0.01, "bandwidth": 0.05},
    "matryoshka": {"k": K, "threshold_beta": 0.9, "prefixes": [8, 32]},
    "gated": {"l1_coefficient": 0.01},
}


def sparse_data(n: int, seed: int = 0) -> torch.Tensor:
    """Sums of about 3 of 48 random directions with positive weights, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(48, d, generator=g)
    codes = torch.rand(n, 48, generator=g) * (torch.rand(n, 48, generator=g) < 3 / 48)
    return codes @ directions + 0.5


def model_for(name: str, seed: int = 0, **fields: object) -> D.Dictionary:
    return D.create(D.make_config(name, d=d, n_latents=KAPPA, **{**MODERN[name], **fields}), seed=seed)


def train_steps(model: D.Dictionary, x: torch.Tensor, steps: int, lr: float = 1e-2) -> list[float]:
    """Full-batch Adam steps through the trainer's own step; the loss before each."""
    model.prepare(x)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    return [float(sum(D.training_step(model, optimizer, x).values())) for _ in range(steps)]


@pytest.mark.parametrize("name", MODERN)
def test_a_few_steps_lower_the_loss(name):
    losses = train_steps(model_for(name), sparse_data(256), 40)
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 0.7 * losses[0], losses[::8]


@pytest.mark.parametrize("name", MODERN)
def test_save_and_load_reproduce_encode_and_decode_exactly(name, tmp_path):
    model = model_for(name)
    x = sparse_data(128)
    train_steps(model, x, 5)
    with torch.no_grad():
        model.input_scale.fill_(0.37)

    back = D.load_dictionary(D.save_dictionary(model, tmp_path / name))

    assert back.architecture == name and back.config == model.config
    for key, value in model.state_dict().items():  # parameters and buffers: θ, firing counters
        assert torch.equal(back.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(back.encode(x), model.encode(x))
        assert torch.equal(back(x), model(x))


def test_a_log_threshold_jumprelu_saves_and_loads_exactly(tmp_path):
    model = model_for("jumprelu", threshold_parameterization="log")
    x = sparse_data(128)
    train_steps(model, x, 5)

    back = D.load_dictionary(D.save_dictionary(model, tmp_path / "log"))

    assert back.config.threshold_parameterization == "log" and torch.equal(back.threshold, model.threshold)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("name", ["batchtopk", "matryoshka"])
def test_batchtopk_inference_needs_no_batch_and_keeps_about_k(name):
    model = model_for(name)
    x = sparse_data(512)
    assert float(model.threshold) == -1  # not estimated yet
    train_steps(model, x, 60)

    model.eval()
    with torch.no_grad():
        batch = model.encode(x)
        one_at_a_time = torch.cat([model.encode(row[None]) for row in x[:16]])
    assert torch.equal(one_at_a_time != 0, batch[:16] != 0)  # row by row: the same matmul up to rounding
    torch.testing.assert_close(one_at_a_time, batch[:16], rtol=1e-6, atol=1e-6)
    assert float(model.threshold) > 0
    l0 = float((batch != 0).sum(-1).float().mean())
    assert abs(l0 - K) < 1.0, l0


def test_batch_topk_keeps_k_per_vector_on_average_over_the_batch():
    pre = torch.tensor([[5.0, 4.0, 3.0, -1.0], [0.5, 0.1, 2.0, 0.2]])
    values, indices, rows = batch_topk(pre, 2)
    # a ragged code in row-major order: the first row keeps 3, the second 1
    assert (
        values.tolist() == [5.0, 4.0, 3.0, 2.0] and indices.tolist() == [0, 1, 2, 2] and rows.tolist() == [0, 0, 0, 1]
    )
    assert torch.equal(
        dense_from_sparse(values, indices, 4, row_layout(rows, 2)),
        torch.tensor([[5.0, 4.0, 3.0, 0.0], [0.0, 0.0, 2.0, 0.0]]),
    )


def dense_batch_topk(pre, k):
    flat = pre.flatten()
    return torch.zeros_like(flat).scatter(0, flat.topk(k * pre.shape[0]).indices, 1.0).view_as(pre) * pre


@pytest.mark.parametrize(
    ("rows", "n_latents", "k", "seed"), [(64, 96, 3, 0), (7, 40, 5, 1), (16, 8, 8, 2), (300, 50, 2, 3), (4, 6, 5, 4)]
)
def test_batch_topk_equals_the_top_k_times_b_of_the_whole_batch(rows, n_latents, k, seed):
    g = torch.Generator().manual_seed(seed)
    pre = torch.randn(rows, n_latents, generator=g)
    pre[0] += 10.0  # one row outranks the rest: the cut guessed from the first rows is too high
    values, indices, batch_rows = batch_topk(pre, k)
    assert values.shape == indices.shape == batch_rows.shape == (min(k * rows, pre.numel()),)
    assert bool((batch_rows[1:] >= batch_rows[:-1]).all())  # row-major order
    layout = row_layout(batch_rows, rows)
    torch.testing.assert_close(
        dense_from_sparse(values, indices, n_latents, layout), dense_batch_topk(pre, k), rtol=0, atol=0
    )


def test_batch_topk_breaks_ties_at_the_cut_and_keeps_exactly_k_times_b():
    pre = torch.tensor([[3.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the top 2·2 = 4: 3.0 and three of the four 1.0s
    values, indices, rows = batch_topk(pre, 2)
    assert (
        values.tolist() == [3.0, 1.0, 1.0, 1.0] and indices.tolist() == [0, 1, 2, 0] and rows.tolist() == [0, 0, 0, 1]
    )


def test_batchtopk_threshold_is_a_moving_average_of_the_smallest_kept_activation():
    model = model_for("batchtopk", threshold_beta=0.75)
    model.train()
    model._update_threshold(torch.tensor([3.0, 0.0, 2.0]))
    assert float(model.threshold) == 2.0  # the first batch sets it
    model._update_threshold(torch.tensor([1.0, 4.0]))
    assert float(model.threshold) == 0.75 * 2 + 0.25 * 1
    model._update_threshold(torch.zeros(3))  # nothing positive kept: unchanged
    assert float(model.threshold) == 1.75


@pytest.mark.parametrize("parameterization", ["direct", "log"])
def test_jumprelu_thresholds_get_the_straight_through_gradient(parameterization):
    model = model_for(
        "jumprelu",
        bandwidth=0.5,
        initial_threshold=0.3,
        aux_coefficient=0.0,
        threshold_parameterization=parameterization,
    )
    x = sparse_data(64)
    model.prepare(x)
    pre = model._pre_activations(x * model.input_scale).detach()
    terms = model.loss(x)
    sum(terms.values()).backward()

    grad = model.threshold_parameter.grad
    assert grad is not None and bool((grad != 0).any())
    # By hand: dL/dθ = Σ_b K((pre − θ)/ε) · (−θ/ε · ∂recon/∂f − λ/ε · 1/B), K = 1[|u| ≤ ½]; dθ/dlog θ = θ.
    theta, eps, lam = 0.3, 0.5, model.config.l0_coefficient
    kernel = (((pre - theta) / eps).abs() <= 0.5).float()
    f = torch.relu(pre) * (pre > theta)
    f.requires_grad_(True)
    recon = ((x - model.decoder(f)) ** 2).sum(-1).mean()
    (grad_f,) = torch.autograd.grad(recon, f)
    expected = (kernel * (-(theta / eps) * grad_f - lam / eps / x.shape[0])).sum(0)
    if parameterization == "log":
        expected = theta * expected
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_jumprelu_direct_thresholds_stay_non_negative_and_log_ones_are_saved_as_log():
    model = model_for("jumprelu")
    assert [name for name, _ in model.named_parameters() if "threshold" in name] == ["threshold"]
    with torch.no_grad():
        model.threshold_parameter.fill_(-0.5)
    model.after_optimizer_step()  # the projection onto θ ≥ 0
    assert torch.equal(model.threshold, torch.zeros(KAPPA))
    log_model = model_for("jumprelu", threshold_parameterization="log", initial_threshold=0.25)
    assert "log_threshold" in log_model.state_dict() and "threshold" not in log_model.state_dict()
    torch.testing.assert_close(log_model.threshold, torch.full((KAPPA,), 0.25))


@pytest.mark.parametrize("parameterization", ["direct", "log"])
def test_jumprelu_with_a_target_starts_each_latent_firing_on_its_share_of_the_sample(parameterization):
    """No initial_threshold and target_l0 = 6 of κ = 64: after the encoder is scaled to the data,
    every latent's θ is set so that it fires on 6/64 of the preparation sample (60 of 640 vectors),
    so the run starts at L0 6."""
    model = model_for("jumprelu", target_l0=6.0, threshold_parameterization=parameterization)
    x = sparse_data(640)
    model.prepare(x)
    with torch.no_grad():
        fires = model._pre_activations(x * model.input_scale) > model.threshold
    per_latent = fires.sum(dim=0)
    assert int(per_latent.min()) >= 59 and int(per_latent.max()) <= 61  # ±1: the matmul's rounding at θ
    assert abs(float(fires.sum(dim=1).float().mean()) - 6.0) < 0.1


def test_jumprelu_initial_threshold_is_kept_when_given_or_without_a_target():
    given = model_for("jumprelu", target_l0=6.0, initial_threshold=0.3)
    no_target = model_for("jumprelu")
    for model in (given, no_target):
        model.prepare(sparse_data(640))
    assert torch.equal(given.threshold, torch.full((KAPPA,), 0.3))
    assert torch.equal(no_target.threshold, torch.full((KAPPA,), 0.001))  # the paper's


def test_jumprelu_sparsity_is_linear_or_quadratic_around_a_target():
    l0 = torch.tensor([10.0, 4.0])  # per vector
    model = model_for("jumprelu", l0_coefficient=2.0)
    assert float(model.sparsity_penalty(l0)) == 2.0 * 7
    model = model_for("jumprelu", l0_coefficient=2.0, target_l0=5.0)
    assert float(model.sparsity_penalty(l0)) == pytest.approx(2.0 * (2 / 5 * 25 + 2 / 5 * 1) / 2)  # per vector
    assert float(model.sparsity_penalty(torch.tensor([5.0, 5.0]))) == 0.0


def test_matryoshka_loss_is_the_sum_of_the_prefix_losses():
    model = D.create(D.make_config("matryoshka", d=3, n_latents=4, k=2, prefixes=[1, 3], aux_coefficient=0.0), seed=0)
    assert model.config.prefixes == [1, 3, 4]
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    model.prepare(x)

    terms = model.loss(x)

    with torch.no_grad():
        pre = (x - model.decoder.bias) @ model.encoder.weight.T + model.encoder.bias
        f = dense_batch_topk(pre, 2).clamp(min=0)  # chosen once, over the whole dictionary
        W, b = model.decoder.weight, model.decoder.bias
        by_hand = {m: ((x - (f[:, :m] @ W[:, :m].T + b)) ** 2).sum(-1).mean() for m in (1, 3, 4)}
    assert list(terms) == ["recon_prefix_1", "recon_prefix_3", "recon", "aux"]
    for m, key in zip((1, 3, 4), ("recon_prefix_1", "recon_prefix_3", "recon")):
        torch.testing.assert_close(terms[key], by_hand[m])
    torch.testing.assert_close(sum(terms.values()), sum(by_hand.values()))


def test_auxk_loss_is_normalised_by_the_residual_spread():
    g = torch.Generator().manual_seed(0)
    pre, residual, weight = (
        torch.randn(6, 5, generator=g),
        torch.randn(6, 3, generator=g),
        torch.randn(3, 5, generator=g),
    )
    dead = torch.tensor([True, False, True, True, False])

    loss = auxk_loss(pre, residual, weight, dead, aux_k=2)

    dead_pre = torch.where(dead, pre, -torch.inf)
    values, indices = torch.relu(dead_pre).topk(2, dim=-1)
    e_hat = torch.zeros_like(pre).scatter(-1, indices, values) @ weight.T
    expected = ((residual - e_hat) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    torch.testing.assert_close(loss, expected)
    assert float(auxk_loss(pre, residual, weight, torch.zeros(5, dtype=torch.bool), aux_k=2)) == 0.0
    assert float(auxk_loss(pre[:1], residual[:1], weight, dead, aux_k=2)) == 0.0  # no spread over one vector


def test_auxk_gives_dead_latents_gradient():
    model = model_for("batchtopk", dead_after_tokens=1)
    x = sparse_data(64)
    model.prepare(x)
    model.train()
    model.loss(x)  # every latent that did not fire is now dead
    dead = model.tokens_since_fired >= 1
    assert bool(dead.any())
    terms = model.loss(x)
    terms["aux"].backward()
    assert float(terms["aux"].detach()) > 0
    assert bool((model.encoder.weight.grad[dead] != 0).any())


CONFIG_ERRORS = [
    ("batchtopk", {"k": KAPPA + 1}, "k must be in [1, n_latents=64], got 65"),
    ("batchtopk", {"k": 0}, "k must be in [1, n_latents=64], got 0"),
    ("batchtopk", {"threshold_beta": 1.0}, "threshold_beta must be in [0, 1), got 1.0"),
    ("batchtopk", {"aux_k": 0}, "aux_k must be at least 1, got 0"),
    ("batchtopk", {"aux_coefficient": -1.0}, "aux_coefficient must be ≥ 0, got -1.0"),
    ("batchtopk", {"dead_after_tokens": 0}, "dead_after_tokens must be at least 1, got 0"),
    ("jumprelu", {"target_l0": -3.0}, "target_l0 must be positive (or None), got -3.0"),
    ("jumprelu", {"l0_coefficient": -0.1}, "l0_coefficient must be ≥ 0, got -0.1"),
    ("jumprelu", {"bandwidth": 0.0}, "bandwidth must be positive, got 0.0"),
    ("jumprelu", {"initial_threshold": 0.0}, "initial_threshold must be positive, got 0.0"),
    (
        "jumprelu",
        {"threshold_parameterization": "exp"},
        "threshold_parameterization must be 'direct' or 'log', got 'exp'",
    ),
    ("matryoshka", {"prefixes": [8, 8, 32]}, "prefixes must be strictly increasing, got [8, 8, 32]"),
    ("matryoshka", {"prefixes": [32, 8]}, "prefixes must be strictly increasing, got [32, 8]"),
    ("matryoshka", {"prefixes": [8, 65]}, "prefixes must lie in [1, n_latents=64], got [8, 65]"),
    ("matryoshka", {"prefixes": [0, 8]}, "prefixes must lie in [1, n_latents=64], got [0, 8]"),
    ("matryoshka", {"prefixes": [8, 2.5]}, "prefixes must be a list of integers, got [8, 2.5]"),
    ("matryoshka", {"k": KAPPA + 1}, "k must be in [1, n_latents=64], got 65"),
    ("gated", {"l1_coefficient": -1.0}, "l1_coefficient must be ≥ 0, got -1.0"),
]


@pytest.mark.parametrize(("name", "fields", "message"), CONFIG_ERRORS)
def test_bad_hyperparameters_are_refused_naming_the_field(name, fields, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(name)}: {re.escape(message)}$"):
        D.make_config(name, d=d, n_latents=KAPPA, **fields)


def test_matryoshka_prefixes_always_end_with_the_full_width():
    assert D.make_config("matryoshka", d=d, n_latents=KAPPA, prefixes=[8, 64]).prefixes == [8, 64]
    assert D.make_config("matryoshka", d=d, n_latents=KAPPA, prefixes=[8]).prefixes == [8, 64]
    assert D.make_config("matryoshka", d=d, n_latents=KAPPA).prefixes == [4, 16, 64]


def saelens_jumprelu(t: dict[str, torch.Tensor], apply_b_dec: bool, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """SAELens's JumpReLU forward, written out: pre = (x − b_dec·a) @ W_enc + b_enc,
    f = relu(pre)·(pre > threshold), x̂ = f @ W_dec + b_dec."""
    pre = (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]
    f = torch.relu(pre) * (pre > t["threshold"])
    return f, f @ t["W_dec"] + t["b_dec"]


def saelens_gated(t: dict[str, torch.Tensor], apply_b_dec: bool, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens's Gated forward, written out."""
    xc = x - t["b_dec"] * apply_b_dec
    f = (xc @ t["W_enc"] + t["b_gate"] > 0) * torch.relu(xc @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    return f, f @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("name", MODERN)
def test_saelens_export_tensors_reproduce_encode_and_decode(name):
    model = model_for(name)
    x = sparse_data(256)
    train_steps(model, x, 10)
    with torch.no_grad():
        model.input_scale.fill_(0.37)  # folded into the exported weights
        model.decoder.bias.add_(0.3)
        if name == "gated":
            model.r_mag.normal_(0, 0.3)
            model.b_mag.normal_(0, 0.3)
    raw = x / 0.37

    form = model.saelens_export()

    expected = {"gated": ["W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"]}.get(
        name, ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"]
    )
    assert form.architecture == ("gated" if name == "gated" else "jumprelu") and form.apply_b_dec_to_input
    assert list(form.tensors) == expected and form.cfg == {}
    assert form.tensors["W_enc"].shape == (d, KAPPA) and form.tensors["W_dec"].shape == (KAPPA, d)
    forward = saelens_gated if name == "gated" else saelens_jumprelu
    with torch.no_grad():
        features = model.encode(raw)
        theirs, recon = forward(form.tensors, True, raw)
        assert bool((features != 0).any()) and not bool((features != 0).all())
        assert torch.equal(theirs != 0, features != 0)
        torch.testing.assert_close(theirs, features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(recon, model.decode(features), rtol=1e-5, atol=1e-5)


def test_they_train_side_by_side_on_the_same_batches(tmp_path):
    data = sparse_data(1024)
    configs = {name: D.make_config(name, d=d, n_latents=KAPPA, **fields) for name, fields in MODERN.items()}
    configs["topk_aux"] = D.make_config("topk_aux", d=d, n_latents=KAPPA, k=K)

    result = D.train(
        configs,
        D.TensorBatchSource(data, 128),
        tmp_path,
        D.TrainConfig(epochs=1, device="cpu", progress=False, lr=1e-2, checkpoint_every=0, curve_vectors=256),
    )

    assert result.steps == 8 and set(result.metrics) == set(configs)
    for name, metrics in result.metrics.items():
        assert math.isfinite(metrics["fvu_deterministic"]) and metrics["fvu_deterministic"] < 1.5, name
        back = D.load_dictionary(tmp_path / name)
        assert back.architecture == name
        planned = configs[name].to_dict()
        if "dead_after_tokens" in planned:  # unset: a 32nd of the run's 8 × 128 tokens
            planned["dead_after_tokens"] = 8 * 128 // 32
        assert json.loads((tmp_path / name / "config.json").read_text())["config"] == planned
    assert float(result.dictionaries["batchtopk"].threshold) > 0


@pytest.mark.parametrize(
    ("fields", "run_tokens", "window"),
    [({}, 8 * 128, 32), ({}, 10**9, 10_000_000), ({}, 20, 1), ({"dead_after_tokens": 500}, 8 * 128, 500)],
)
def test_the_dead_window_follows_the_run_unless_it_is_set(fields, run_tokens, window):
    config = D.make_config("batchtopk", d=d, n_latents=KAPPA, k=K, **fields)
    model = D.create(config, seed=0)
    assert model.dead_window == fields.get("dead_after_tokens", 10_000_000)  # before planning
    model.plan_training(run_tokens)
    assert model.config.dead_after_tokens == model.dead_window == window
    assert config.dead_after_tokens == fields.get("dead_after_tokens")  # the caller's config is left as it was


@pytest.mark.parametrize("name", ["jumprelu", "gated"])
def test_dense_at_first_dictionaries_start_reconstructing_at_the_data_scale(name):
    model = D.create(D.make_config(name, d=d, n_latents=16 * d), seed=0)  # κ ≫ d: half of 256 latents fire
    x = sparse_data(512) * 3.0
    model.prepare(x)

    with torch.no_grad():
        centred = (x - model.decoder.bias).norm(dim=-1).mean()
        reconstructed = (model.decode(model.encode(x)) - model.decoder.bias).norm(dim=-1).mean()
    assert float(reconstructed / centred) == pytest.approx(1.0, rel=0.05)
    torch.testing.assert_close(model.decoder.bias, x.mean(0))


@pytest.mark.parametrize("aux_k", [6, 512])
@pytest.mark.parametrize("name", ["topk_aux", "batchtopk", "matryoshka"])
def test_sparse_training_step_equals_the_dense_computation(name, aux_k, monkeypatch):
    """The TopK family trains through the sparse path: the same loss terms, gradients, firing
    counters and θ as the dense definition, with some latents dead (AuxK active). With aux_k
    above the number of latents that may be dead, the sparse path asks for only that many AuxK
    candidates per vector, and still computes the dense definition's loss."""
    asked = []
    encode = auxk_module.sparse_encode_with_aux

    def spied(*args, **kwargs):
        asked.append((args[5], args[6]))  # (aux_mask, aux_k)
        return encode(*args, **kwargs)

    monkeypatch.setattr(auxk_module, "sparse_encode_with_aux", spied)
    fields = {"k": K, "dead_after_tokens": 64, "aux_k": aux_k}
    if name == "matryoshka":
        fields["prefixes"] = [8, 32]
    model = D.create(D.make_config(name, d=d, n_latents=KAPPA, **fields), seed=0)
    x = sparse_data(64)
    model.prepare(x)
    model.train()
    model.loss(x[:32])  # 32 tokens: a latent silent in this batch and the next one is dead after it
    reference = copy.deepcopy(model)

    terms = model.loss(x[32:])
    grads = torch.autograd.grad(sum(terms.values()), list(model.parameters()))

    m, xb = reference, x[32:]
    pre = m.encoder(xb - m.decoder.bias)
    if name == "topk_aux":
        f = torch.relu(pre).topk(K, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, f.indices, f.values)
    else:
        flat = torch.relu(pre).flatten()
        top = flat.topk(K * xb.shape[0])
        f = torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
        beta = m.config.threshold_beta
        expected_threshold = beta * m.threshold + (1 - beta) * top.values[top.values > 0].min()
    fired = (f != 0).any(dim=0)
    dead = (m.tokens_since_fired + 32 >= 64) & ~fired
    assert bool(dead.any())
    prefixes = m.config.prefixes if name == "matryoshka" else [KAPPA]
    W, b = m.decoder.weight, m.decoder.bias
    reconstructions = [f[:, :p] @ W[:, :p].T + b for p in prefixes]
    expected = {f"recon_prefix_{p}": ((xb - r) ** 2).sum(-1).mean() for p, r in zip(prefixes[:-1], reconstructions)}
    expected["recon"] = ((xb - reconstructions[-1]) ** 2).sum(-1).mean()
    variance = ((xb - xb.mean(0)) ** 2).sum(-1).mean()
    expected["aux"] = m.config.aux_coefficient * variance * auxk_loss(pre, xb - reconstructions[-1], W, dead, aux_k)
    aux_mask, asked_k = asked[-1]
    assert asked_k == min(aux_k, int(aux_mask.sum())) and bool(dead.any())
    assert list(terms) == list(expected)
    for key in expected:
        torch.testing.assert_close(terms[key], expected[key])
    for got, want in zip(grads, torch.autograd.grad(sum(expected.values()), list(m.parameters()))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(model.tokens_since_fired, torch.where(fired, 0, m.tokens_since_fired + 32))
    if name != "topk_aux":
        torch.testing.assert_close(model.threshold, expected_threshold)


@pytest.mark.parametrize("sparse_below", [1.0, 0.0])
def test_jumprelu_step_is_the_same_on_the_sparse_and_the_dense_path(sparse_below, monkeypatch):
    """JumpReLU trains through the sparse path when few latents are active (here: forced, 1.0), else
    densely (0.0): the same loss terms and gradients (θ's straight-through ones included) as the
    dense formulas, with entries in the estimators' window and some latents dead (AuxK active)."""
    monkeypatch.setattr(jumprelu_module, "SPARSE_MAX_ACTIVE_FRACTION", sparse_below)
    sparse_steps, sparse_code = [], AuxKSAE._sparse_training_code

    def counted(self, *args, **kwargs):
        sparse_steps.append(1)
        return sparse_code(self, *args, **kwargs)

    monkeypatch.setattr(AuxKSAE, "_sparse_training_code", counted)
    fields = {"dead_after_tokens": 64, "aux_k": 6, "bandwidth": 0.2, "target_l0": 6.0, "initial_threshold": 0.3}
    model = D.create(D.make_config("jumprelu", d=d, n_latents=KAPPA, **fields), seed=0)
    x = sparse_data(64)
    model.prepare(x)
    with torch.no_grad():
        model.threshold_parameter[KAPPA // 2 :] = 100.0  # these never fire: dead after the next batch
    model.train()
    model.loss(x[:32])
    reference = copy.deepcopy(model)

    terms = model.loss(x[32:])
    grads = torch.autograd.grad(sum(terms.values()), list(model.parameters()))

    m, xb = reference, x[32:]
    pre = m.encoder(xb - m.decoder.bias)
    in_window = ((pre - m.threshold) / 0.2).abs() <= 0.5
    assert bool((in_window & (pre <= m.threshold)).any())  # inactive entries whose θ gets a gradient
    f = jumprelu_ste(pre, m.threshold, 0.2)
    x_hat = m.decoder(f)
    fired = (f != 0).any(dim=0)
    dead = (m.tokens_since_fired + 32 >= 64) & ~fired
    assert bool(dead.any())
    variance = ((xb - xb.mean(0)) ** 2).sum(-1).mean()
    expected = {
        "recon": ((xb - x_hat) ** 2).sum(-1).mean(),
        "sparsity": m.sparsity_penalty(step_ste(pre, m.threshold, 0.2).sum(-1)),
        "aux": m.config.aux_coefficient * variance * auxk_loss(pre, xb - x_hat, m.decoder.weight, dead, 6),
    }
    assert list(terms) == list(expected)
    for key in expected:
        torch.testing.assert_close(terms[key], expected[key])
    names = [name for name, _ in m.named_parameters()]
    for name, got, want in zip(names, grads, torch.autograd.grad(sum(expected.values()), list(m.parameters()))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    assert torch.equal(model.tokens_since_fired, torch.where(fired, 0, m.tokens_since_fired + 32))
    assert len(sparse_steps) == (2 if sparse_below else 0)
