"""Matryoshka's fused prefix losses (dictionaries/prefix_losses.py) against the plain formulas."""

import pytest
import torch

from dictionaries.prefix_losses import latent_range_layout, prefix_squared_errors
from dictionaries.sparse_topk import dense_from_sparse, row_layout

ENDS = [4, 8, 12]  # three latent ranges of a 12-latent dictionary


def ragged_code(dtype=torch.float32):
    """8 entries, ascending by latent within each row; row 2 has none, and no entry lies in [4, 8)
    for row 0 or row 3, none at all in row 1's [0, 4)."""
    values = torch.tensor([4.0, 3.0, 5.0, 2.0, 1.0, 0.5, 6.0, 7.0], dtype=dtype, requires_grad=True)
    indices = torch.tensor([1, 3, 9, 5, 11, 2, 8, 10])
    layout = row_layout(torch.tensor([0, 0, 0, 1, 1, 3, 3, 3]), 4)
    return values, indices, layout


def plain_losses(values, indices, layout, weight, bias, x):
    f = dense_from_sparse(values, indices, 12, layout)
    reconstructions = [f[:, :m] @ weight[:, :m].T + bias for m in ENDS]
    return torch.stack([((x - r) ** 2).sum(-1).mean() for r in reconstructions]), x - reconstructions[-1]


def test_latent_range_layout_puts_each_rows_range_in_its_own_bag():
    _, indices, layout = ragged_code()
    by_range = latent_range_layout(indices, layout, ENDS)
    assert by_range.rows.tolist() == [0, 0, 2, 4, 5, 9, 11, 11]  # bag = row · 3 + range
    assert by_range.offsets.tolist() == [0, 2, 2, 3, 3, 4, 5, 5, 5, 5, 6, 6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_residual_and_gradients_equal_the_plain_formulas(dtype):
    torch.manual_seed(0)
    values, indices, layout = ragged_code(dtype)
    weight = torch.randn(3, 12, dtype=dtype, requires_grad=True)
    bias = torch.randn(3, dtype=dtype, requires_grad=True)
    x = torch.randn(4, 3, dtype=dtype, requires_grad=True)
    upstream = torch.tensor([0.5, 2.0, 1.0], dtype=dtype)  # a different weight per prefix loss

    losses, residual = prefix_squared_errors(values, indices, layout, weight, bias, x, ENDS)
    want_losses, want_residual = plain_losses(values, indices, layout, weight, bias, x)

    torch.testing.assert_close(losses, want_losses.float())  # float32 whatever the weights' dtype
    torch.testing.assert_close(residual, want_residual.detach())
    assert not residual.requires_grad
    inputs = [values, weight, bias, x]
    got = torch.autograd.grad((upstream.float() * losses).sum(), inputs)
    want = torch.autograd.grad((upstream * want_losses).sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
