"""The sparse TopK path (dictionaries/sparse_topk.py) against the dense one: same values, same
gradients, same training trajectory, to float tolerance. CPU only, small sizes."""

import copy

import pytest
import torch
from torch import nn

import dictionaries as D
from dictionaries.base import squared_error
from dictionaries.sae import SAETopK, topk_activations
from dictionaries.sparse_topk import (
    dense_from_sparse,
    fired_latents,
    flat_nonzero,
    gather_dots,
    row_layout,
    scatter_outer,
    sparse_decode,
    threshold_code,
    topk_encode,
    topk_encode_with_aux,
)

SIZES = [  # (B, d, κ, k)
    (8, 6, 20, 4),
    (1, 5, 12, 3),  # one vector
    (6, 4, 9, 9),  # k = κ: every latent kept, the negative ones as zeros
    (32, 16, 128, 8),
]


def layers(d, kappa, seed, dtype=torch.float32):
    torch.manual_seed(seed)
    encoder, decoder = nn.Linear(d, kappa).to(dtype), nn.Linear(kappa, d).to(dtype)
    return encoder, decoder


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("x_grad", [False, True])
@pytest.mark.parametrize(("batch", "d", "kappa", "k"), SIZES)
def test_matches_dense_path(batch, d, kappa, k, x_grad):
    encoder, decoder = layers(d, kappa, seed=batch + kappa)
    x = torch.randn(batch, d, requires_grad=x_grad)
    probe = torch.randn(batch, d)  # a generic upstream gradient
    params = [encoder.weight, encoder.bias, decoder.weight, decoder.bias] + ([x] if x_grad else [])

    f_dense = topk_activations(encoder(x), k)
    x_hat_dense = decoder(f_dense)
    loss_dense = squared_error(x, x_hat_dense).mean() + (probe * x_hat_dense).sum()

    values, indices = topk_encode(x, encoder.weight, encoder.bias, k)
    assert values.shape == indices.shape == (batch, k) and indices.dtype == torch.int64
    assert bool((values >= 0).all()) and bool((values[:, :-1] >= values[:, 1:]).all())  # sorted
    x_hat = sparse_decode(values, indices, decoder.weight, decoder.bias)
    loss = squared_error(x, x_hat).mean() + (probe * x_hat).sum()

    torch.testing.assert_close(dense_from_sparse(values, indices, kappa), f_dense)
    torch.testing.assert_close(x_hat, x_hat_dense)
    for got, want in zip(grads(loss, params), grads(loss_dense, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fewer_positive_than_k():
    """Where fewer than k pre-activations are positive the codes are zero-filled, as in the dense path."""
    encoder, decoder = layers(4, 10, seed=0)
    with torch.no_grad():
        encoder.bias.fill_(-100.0)
        encoder.bias[3] = 100.0
    x = torch.randn(5, 4)
    values, indices = topk_encode(x, encoder.weight, encoder.bias, 3)
    torch.testing.assert_close(dense_from_sparse(values, indices, 10), topk_activations(encoder(x), 3))
    assert bool((indices[:, 0] == 3).all()) and bool((values[:, 1:] == 0).all())
    x_hat = sparse_decode(values, indices, decoder.weight, decoder.bias)
    g_w, g_b = grads(x_hat.sum(), [encoder.weight, encoder.bias])
    assert g_b.nonzero().flatten().tolist() == [3]  # no gradient through the zero-filled slots
    assert g_w.abs().sum(1).nonzero().flatten().tolist() == [3]
    assert fired_latents(values, indices, 10).nonzero().flatten().tolist() == [3]


def test_leading_dimensions_and_no_bias():
    encoder, decoder = layers(5, 16, seed=1)
    x = torch.randn(2, 3, 5)
    values, indices = topk_encode(x, encoder.weight, None, 4)
    assert values.shape == (2, 3, 4)
    torch.testing.assert_close(
        dense_from_sparse(values, indices, 16), topk_activations(x @ encoder.weight.T, 4), rtol=0, atol=0
    )
    torch.testing.assert_close(
        sparse_decode(values, indices, decoder.weight), dense_from_sparse(values, indices, 16) @ decoder.weight.T
    )


def test_empty_auxiliary_set():
    encoder, decoder = layers(4, 8, seed=2)
    x = torch.randn(3, 4)
    _, _, aux_values, aux_indices = topk_encode_with_aux(x, encoder.weight, encoder.bias, 2)
    assert aux_values.shape == aux_indices.shape == (3, 0)
    torch.testing.assert_close(sparse_decode(aux_values, aux_indices, decoder.weight), torch.zeros(3, 4))
    none_dead = torch.zeros(8, dtype=torch.bool)  # every aux value is a zero: no gradient from them
    _, _, aux_values, aux_indices = topk_encode_with_aux(x, encoder.weight, encoder.bias, 2, none_dead, aux_k=3)
    assert bool((aux_values == 0).all())
    aux_hat = sparse_decode(aux_values, aux_indices, decoder.weight)
    for grad in grads(aux_hat.sum(), [encoder.weight, encoder.bias]):
        assert not bool(grad.any())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["segment", "index_add"])
def test_scatter_and_gather_primitives(method, dtype):
    torch.manual_seed(0)
    batch, k, kappa, d = 7, 3, 11, 5
    indices = torch.stack([torch.randperm(kappa)[:k] for _ in range(batch)])
    weights, rhs = torch.randn(batch, k, dtype=dtype), torch.randn(batch, d, dtype=dtype)
    dense = dense_from_sparse(weights, indices, kappa)  # G [B, κ]
    torch.testing.assert_close(scatter_outer(indices, weights, rhs, kappa, method=method), dense.T @ rhs)
    table = torch.randn(kappa, d, dtype=dtype)
    torch.testing.assert_close(gather_dots(indices, table, rhs), (rhs @ table.T).gather(1, indices))


def test_gradcheck_float64():
    torch.manual_seed(3)
    d, kappa, k = 4, 10, 3
    x = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    w_enc = torch.randn(kappa, d, dtype=torch.float64, requires_grad=True)
    b_enc = torch.randn(kappa, dtype=torch.float64, requires_grad=True)
    w_dec = torch.randn(d, kappa, dtype=torch.float64, requires_grad=True)
    b_dec = torch.randn(d, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(kappa, dtype=torch.bool)
    mask[::2] = True

    def encode(x, w, b):
        return topk_encode(x, w, b, k)[0]

    def encode_aux(x, w, b):
        values, _, aux_values, _ = topk_encode_with_aux(x, w, b, k, aux_mask=mask, aux_k=2)
        return values, aux_values

    # Fixed indices: the top-k selection is piecewise constant, so check the smooth part.
    _, indices = topk_encode(x, w_enc, b_enc, k)
    values = torch.rand(5, k, dtype=torch.float64, requires_grad=True)

    def decode(v, w, b):
        return sparse_decode(v, indices, w, b)

    assert torch.autograd.gradcheck(encode, (x, w_enc, b_enc))
    assert torch.autograd.gradcheck(encode_aux, (x, w_enc, b_enc))
    assert torch.autograd.gradcheck(decode, (values, w_dec, b_dec))


def test_aux_matches_dense_topk_aux_loss():
    """TopKAux's loss (encode x − b_dec, AuxK over dead latents) built sparsely: same gradients."""
    torch.manual_seed(4)
    d, kappa, k, aux_k = 6, 24, 3, 5
    encoder, decoder = layers(d, kappa, seed=5)
    dead = torch.rand(kappa) < 0.5
    x = torch.randn(10, d)
    params = [encoder.weight, encoder.bias, decoder.weight, decoder.bias]

    pre = encoder(x - decoder.bias)
    f = topk_activations(pre, k)
    x_hat = decoder(f)
    dead_after = dead & ~(f != 0).any(dim=0)  # the latents that fire in this batch are not dead
    assert bool((dead & ~dead_after).any()) and bool(dead_after.any())
    aux_hat = topk_activations(pre.masked_fill(~dead_after, float("-inf")), aux_k) @ decoder.weight.T
    residual = (x - x_hat).detach()
    loss_dense = squared_error(x, x_hat).mean() + squared_error(residual, aux_hat).mean() / 32

    values, indices, aux_values, aux_indices = topk_encode_with_aux(
        x - decoder.bias, encoder.weight, encoder.bias, k, aux_mask=dead, aux_k=aux_k
    )
    x_hat_sparse = sparse_decode(values, indices, decoder.weight, decoder.bias)
    aux_hat_sparse = sparse_decode(aux_values, aux_indices, decoder.weight)
    residual_sparse = (x - x_hat_sparse).detach()
    loss = squared_error(x, x_hat_sparse).mean() + squared_error(residual_sparse, aux_hat_sparse).mean() / 32

    assert bool(dead_after[aux_indices[aux_values > 0]].all())
    torch.testing.assert_close(aux_hat_sparse, aux_hat)
    torch.testing.assert_close(loss, loss_dense)
    for got, want in zip(grads(loss, params), grads(loss_dense, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_autocast_bf16():
    encoder, decoder = layers(16, 64, seed=6)
    x = torch.randn(12, 16)
    params = [encoder.weight, encoder.bias, decoder.weight, decoder.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values, indices = topk_encode(x, encoder.weight, encoder.bias, 4)
        x_hat = sparse_decode(values, indices, decoder.weight, decoder.bias)
        pre = encoder(x)  # the dense path's bf16 pre-activations
    assert values.dtype == pre.dtype == torch.bfloat16 and x_hat.dtype == torch.float32
    torch.testing.assert_close(values, torch.relu(pre.gather(1, indices)))
    torch.testing.assert_close(values, torch.relu(pre).topk(4, dim=-1).values)
    got = grads(squared_error(x, x_hat).mean(), params)
    assert all(g.dtype == torch.float32 and bool(torch.isfinite(g).all()) for g in got)
    # The same gradients as the fp32 sparse path given the same (bf16-chosen) codes, to bf16 precision.
    x_hat_ref = sparse_decode(values.float(), indices, decoder.weight, decoder.bias)
    torch.testing.assert_close(x_hat, x_hat_ref)


class _SparseSAETopK(SAETopK):
    """SAETopK whose loss uses the sparse path (how the lead wires it in)."""

    def _loss(self, xn, generator):
        values, indices = topk_encode(xn, self.encoder.weight, self.encoder.bias, self.config.k)
        x_hat = sparse_decode(values, indices, self.decoder.weight, self.decoder.bias)
        return {"recon": self._reconstruction_error(xn, x_hat)}


def test_training_steps_match_dense():
    dense = D.create(D.make_config("sae_topk", d=8, n_latents=48, k=4), seed=7)
    sparse = _SparseSAETopK(copy.deepcopy(dense.config))
    sparse.load_state_dict(dense.state_dict())
    opt_dense = torch.optim.Adam(dense.parameters(), lr=1e-3)
    opt_sparse = torch.optim.Adam(sparse.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(8)
    for _ in range(5):
        batch = torch.randn(16, 8, generator=generator)
        terms_dense = D.training_step(dense, opt_dense, batch)
        terms_sparse = D.training_step(sparse, opt_sparse, batch)
        torch.testing.assert_close(terms_sparse["recon"], terms_dense["recon"])
    for (name, p_sparse), p_dense in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p_sparse, p_dense, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(p, q) for p, q in zip(dense.parameters(), D.create(dense.config, seed=7).parameters()))


def test_rejects_bad_arguments():
    encoder, decoder = layers(4, 8, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        topk_encode(torch.randn(2, 4), encoder.weight, encoder.bias, 9)
    with pytest.raises(ValueError, match="width"):
        topk_encode(torch.randn(2, 5), encoder.weight, encoder.bias, 2)
    with pytest.raises(ValueError, match="shape"):
        sparse_decode(torch.randn(2, 3), torch.zeros(2, 2, dtype=torch.long), decoder.weight)


def test_a_ragged_decode_equals_the_dense_one_with_gradients():
    torch.manual_seed(0)
    decoder = nn.Linear(10, 4)
    values = torch.rand(6, requires_grad=True)
    indices = torch.tensor([3, 3, 7, 0, 9, 2])  # a latent repeated in row 0
    layout = row_layout(torch.tensor([0, 0, 0, 2, 2, 3]), 5)  # rows 1 and 4 are empty
    probe = torch.randn(5, 4)
    x_hat = sparse_decode(values, indices, decoder.weight, decoder.bias, layout)
    dense = dense_from_sparse(values, indices, 10, layout)
    x_hat_dense = decoder(dense)
    torch.testing.assert_close(x_hat, x_hat_dense)
    params = [values, decoder.weight, decoder.bias]
    for got, want in zip(grads((probe * x_hat).sum(), params), grads((probe * x_hat_dense).sum(), params)):
        torch.testing.assert_close(got, want)
    empty = sparse_decode(values[:0], indices[:0], decoder.weight, decoder.bias, row_layout(indices[:0], 3))
    assert torch.equal(empty, decoder.bias.expand(3, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_threshold_code_keeps_exactly_the_active_and_window_entries(dtype):
    """The entries at the window's edges and just outside it, in float32 and in a bf16 pre (compared
    in float32): the same code as the dense definition."""
    bandwidth = 0.25
    threshold = torch.tensor([0.5, 1.0, 2.0])
    pre = torch.tensor(
        [
            [0.5, 1.125, 2.0],  # at θ (window only), θ + ε/2 (active, window edge), at θ
            [0.375, 0.875, 1.5],  # θ − ε/2 twice (window edges), far below (nothing)
            [0.3, 1.5, 3.0],  # under θ − ε/2 but over θ − ε (a candidate, left out), then active
        ],
        dtype=dtype,
    )

    values, indices, rows, in_window, l0 = threshold_code(pre, threshold, bandwidth)

    distance = pre.float() - threshold
    above, window = distance > 0, distance.abs() <= bandwidth / 2
    kept = (above | window).nonzero()
    assert rows.tolist() == kept[:, 0].tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert indices.tolist() == kept[:, 1].tolist() == [0, 1, 2, 0, 1, 1, 2]
    assert values.dtype == dtype
    assert values.tolist() == [0.0, 1.125, 0.0, 0.0, 0.0, 1.5, 3.0]
    assert in_window.tolist() == window[kept[:, 0], kept[:, 1]].tolist()
    assert l0.tolist() == [1.0, 0.0, 2.0]


def test_flat_nonzero_gives_torchs_flat_indices_also_for_a_strided_mask():
    mask = torch.rand(37, 53, generator=torch.Generator().manual_seed(0)) < 0.05
    for m in (mask, mask.t()):  # contiguous (numpy's nonzero) and strided (torch's)
        got = flat_nonzero(m)
        assert got.dtype == torch.int64
        assert torch.equal(got, m.reshape(-1).nonzero().squeeze(1))
    assert flat_nonzero(torch.zeros(0, 4, dtype=torch.bool)).shape == (0,)
