"""A sparse training path for TopK dictionaries: with k ≪ κ, only the k active latents of each
vector take part in the decoder (forward and backward) and in the encoder's backward.

    values, indices = topk_encode(x, encoder.weight, encoder.bias, k)     # [B, k], [B, k]
    x_hat = sparse_decode(values, indices, decoder.weight, decoder.bias)  # [B, d]

gives the same x̂ and the same gradients as the dense

    f = topk_activations(encoder(x), k); x_hat = decoder(f)

(to float rounding), but of its four B·κ·d matrix products per batch only the encoder's forward
remains dense (the pre-activations are needed to choose the top k); the other three become
gathers and segment sums over the B·k active entries, O(B·k·d) work:

- encoder backward: grad W_enc[j] = Σ_b g[b, j] x[b] over the vectors where j is active, grad b_enc
  likewise, grad x = Σ_i g[b, i] W_enc[idx[b, i]] (only when x requires grad, e.g. x − b_dec);
- decoder forward: x̂[b] = Σ_i f[b, i] W_dec[:, idx[b, i]] + b_dec (`embedding_bag`, mode="sum");
- decoder backward: grad f[b, i] = g[b] · W_dec[:, idx[b, i]], grad W_dec only at active columns,
  grad b_dec = Σ_b g[b].

The gradient of W_enc and W_dec is still a dense [κ, d] tensor (zero off the active rows), so any
optimiser works unchanged. The scatter-adds into it sort the B·k entries by latent once and sum
each latent's entries with `embedding_bag` (`segments`, `segment_sum`): no [B·k, d] intermediate,
no atomics, so the result is deterministic on CPU and GPU alike.

Precision: under `torch.autocast` the encoder's matrix product runs in the autocast dtype, as
nn.Linear would; everything sparse (the decoder and all backward passes) runs in the weights'
dtype, since it is cheap. Plain PyTorch, on any device.

`topk_encode_with_aux` also returns the top `aux_k` of the masked pre-activations (the AuxK
dead-latent loss of every modern dictionary) from the same dense product, with gradients through
both sets. `sparse_encode_with_aux` (the trainers' entry point) can also keep the k·B largest
activations of the whole batch (BatchTopK and Matryoshka, `batch_topk`) instead of k per vector,
or every activation above a learned per-latent threshold (JumpReLU, `threshold_code`, with its
straight-through gradients). Rows then keep different numbers of latents, so that code is
*ragged*: values and indices are flat [N], in batch-row order, with a `RowLayout` saying which row
each entry belongs to. Every function here that takes a code takes either form (`layout=None` for
a [B, k] one), and a ragged code costs what a [B, k] one with as many entries costs.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from interp_sae.errors import ConfigError

ScatterMethod = Literal["segment", "index_add"]


# --- primitives ----------------------------------------------------------------------------------
class RowLayout(NamedTuple):
    """Where the entries of a ragged code [N] lie in the batch (see `row_layout`)."""

    rows: torch.Tensor
    """[N] int64, ascending: the batch row of each entry."""
    offsets: torch.Tensor
    """[B] int64: where row b's entries start (embedding_bag's offsets; a row may have none)."""


def row_layout(rows: torch.Tensor, n_rows: int) -> RowLayout:
    """The layout of a ragged code whose entries belong to the (ascending) batch `rows` [N], out of `n_rows`."""
    counts = torch.bincount(rows, minlength=n_rows)
    return RowLayout(rows, torch.cumsum(counts, 0) - counts)


class Segments(NamedTuple):
    """The B·k entries of indices [B, k] grouped by value (see `segments`)."""

    order: torch.Tensor
    """[B·k]: indices.flatten()[order] ascends; stable, so each group keeps batch order."""
    source_rows: torch.Tensor
    """[B·k]: the batch row b of each entry, in that order."""
    offsets: torch.Tensor
    """[n_rows]: where group j starts in that order."""


def segments(indices: torch.Tensor, n_rows: int, batch_rows: torch.Tensor | None = None) -> Segments:
    """Group the entries of indices [B, k] (or of a ragged code [N] whose entries lie in `batch_rows`
    [N]) by value, for any number of `segment_sum`s over them."""
    flat = indices.reshape(-1)
    # On CPU, sort as one row of a 2-D tensor: a serial comparison sort. The 1-D integer sort is a
    # parallel radix sort whose many thread barriers stall when the cores are shared (10-100× slower).
    _, order = torch.sort(flat[None] if flat.device.type == "cpu" else flat, stable=True)
    order = order.reshape(-1)
    counts = torch.bincount(flat, minlength=n_rows)
    source_rows = order.div(indices.shape[1], rounding_mode="floor") if batch_rows is None else batch_rows[order]
    return Segments(order, source_rows, torch.cumsum(counts, 0) - counts)


def segment_sum(plan: Segments, weights: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """out [n_rows, d]: out[j] = Σ over the entries (b, i) of group j of weights[b, i] · rhs[b].

    An embedding_bag with one bag per group (row of the output) over the table rhs [B, d]: no
    [B·k, d] intermediate, no atomics (deterministic on every device), empty groups give zeros.
    """
    return F.embedding_bag(
        plan.source_rows,
        rhs,
        plan.offsets,
        mode="sum",
        per_sample_weights=weights.reshape(-1)[plan.order].to(rhs.dtype),
    )


def scatter_outer(
    indices: torch.Tensor,
    weights: torch.Tensor,
    rhs: torch.Tensor,
    n_rows: int,
    method: ScatterMethod = "segment",
    layout: RowLayout | None = None,
) -> torch.Tensor:
    """out [n_rows, d] with out[j] = Σ_{b,i: indices[b,i] = j} weights[b, i] · rhs[b].

    That is Gᵀ rhs for the sparse G [B, n_rows] with G[b, indices[b, i]] = weights[b, i] (repeated
    indices in a row add up). indices, weights [B, k] (or a ragged [N] with its `layout`); rhs [B, d];
    the result has rhs's dtype. "segment" sorts the entries by row (see `segment_sum`); "index_add" is
    the plain reference for [B, k] codes (a [B·k, d] intermediate, atomics on GPU).
    """
    d = rhs.shape[1]
    if method == "segment":
        return segment_sum(segments(indices, n_rows, None if layout is None else layout.rows), weights, rhs)
    if layout is not None:
        raise ConfigError("scatter method 'index_add' takes [B, k] codes only")
    if method == "index_add":
        source = (weights.to(rhs.dtype)[:, :, None] * rhs[:, None, :]).reshape(-1, d)
        return torch.zeros(n_rows, d, dtype=rhs.dtype, device=rhs.device).index_add_(0, indices.reshape(-1), source)
    raise ConfigError(f"unknown scatter method {method!r}")


def gather_dots(
    indices: torch.Tensor, table: torch.Tensor, rhs: torch.Tensor, layout: RowLayout | None = None
) -> torch.Tensor:
    """out [B, k] with out[b, i] = table[indices[b, i]] · rhs[b]; table [n, d], rhs [B, d]. For a
    ragged code (indices [N] with its `layout`): out [N], each entry's dot with its row of rhs.

    The per_sample_weights gradient of embedding_bag, which needs no [B, k, d] intermediate.
    """
    offsets = None if layout is None else layout.offsets
    with torch.enable_grad():
        weights = torch.zeros(indices.shape, dtype=table.dtype, device=table.device, requires_grad=True)
        out = F.embedding_bag(indices, table.detach(), offsets, per_sample_weights=weights, mode="sum")
        (dots,) = torch.autograd.grad(out, weights, rhs.to(table.dtype))
    return dots


def gather_sum(
    indices: torch.Tensor, weights: torch.Tensor, table: torch.Tensor, layout: RowLayout | None = None
) -> torch.Tensor:
    """out [B, d] with out[b] = Σ_i weights[b, i] · table[indices[b, i]]; table [n, d]. For a ragged
    code (indices, weights [N] with its `layout`), each row sums its own entries."""
    offsets = None if layout is None else layout.offsets
    return F.embedding_bag(indices, table, offsets, per_sample_weights=weights.to(table.dtype), mode="sum")


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype nn.Linear would compute in here: the autocast dtype if autocast is on."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


# --- encoder ---------------------------------------------------------------------------------------
class Selection(NamedTuple):
    """Which latents of each vector a sparse code keeps (`_SparseEncode`)."""

    kind: Literal["topk", "batch_topk", "threshold"]
    """"topk": the k largest per vector; "batch_topk": the k·B largest of the batch (ragged);
    "threshold": JumpReLU's, every pre-activation above its latent's θ (ragged)."""
    k: int = 0
    bandwidth: float = 0.0
    """"threshold": the straight-through window |pre − θ| ≤ bandwidth/2 (see `sparse_encode_with_aux`)."""


class _SparseEncode(torch.autograd.Function):
    """(x, W_enc, b_enc, θ) → the code of ReLU(x W_encᵀ + b_enc) that `selection` keeps, as (values,
    indices) (a [B, k] code, or a ragged one whose entries lie in `batch_rows`, empty otherwise);
    optionally the top aux_k of the pre-activations of the latents in aux_mask that did not fire, as
    (aux_values, aux_indices); and for "threshold" the per-vector L0 [B] (empty otherwise).

    For "threshold" the code also holds every window entry (|pre − θ| ≤ ε/2), with value 0 where it
    is not active: the decoder's backward then gives their gradients, which θ's straight-through
    estimators need (Rajamanoharan et al.: ∂f/∂θ = −(θ/ε)K, ∂L0/∂θ = −(1/ε)K, K the rectangle)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        threshold: torch.Tensor | None,
        selection: Selection,
        aux_mask: torch.Tensor | None,
        aux_k: int,
        compute_dtype: torch.dtype,
        given_pre: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        with torch.autocast(x.device.type, enabled=False):
            if given_pre is None:
                w, xc = weight.to(compute_dtype), x.to(compute_dtype)
                pre = xc @ w.t() if bias is None else torch.addmm(bias.to(compute_dtype), xc, w.t())
            else:  # the AuxK selection below overwrites pre: keep the caller's intact
                pre = given_pre.detach().clone() if aux_mask is not None and aux_k > 0 else given_pre.detach()
            l0 = in_window = _no_rows(pre.device)
            # top-k of pre, then ReLU: the same codes as top-k of ReLU(pre) (where fewer than k are
            # positive, both fill with zeros, only the indices of those zeros differ).
            if selection.kind == "topk":
                (values, indices), batch_rows = pre.topk(selection.k, dim=-1), _no_rows(pre.device)
            elif selection.kind == "batch_topk":
                values, indices, batch_rows = batch_topk(pre, selection.k)
            else:
                assert threshold is not None
                values, indices, batch_rows, in_window, l0 = threshold_code(pre, threshold, selection.bandwidth)
            values.clamp_(min=0)
            if aux_mask is not None and aux_k > 0:
                # Dead after this batch: the candidates that did not fire in it.
                dead = aux_mask & ~fired_latents(values, indices, pre.shape[1])
                aux_values, aux_indices = pre.masked_fill_(~dead, float("-inf")).topk(aux_k, dim=-1)
                aux_values.clamp_(min=0)
            else:
                aux_values = values.new_empty(x.shape[0], 0)
                aux_indices = indices.new_empty(x.shape[0], 0)
        del pre
        ctx.save_for_backward(x, weight, threshold, values, indices, aux_values, aux_indices, batch_rows, in_window)
        ctx.has_bias = bias is not None
        ctx.selection = selection
        ctx.mark_non_differentiable(indices, aux_indices, batch_rows)
        return values, indices, aux_values, aux_indices, batch_rows, l0

    @staticmethod
    def backward(
        ctx: Any,
        grad_values: torch.Tensor | None,
        _grad_indices: Any,
        grad_aux_values: torch.Tensor | None,
        _grad_aux_indices: Any,
        _grad_batch_rows: Any,
        grad_l0: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, threshold, values, indices, aux_values, aux_indices, batch_rows, in_window = ctx.saved_tensors
        ragged = ctx.selection.kind != "topk"
        main_layout = row_layout(batch_rows, x.shape[0]) if ragged else None
        parts = []  # (gradient, indices, layout) of each part of the code that has a gradient
        for grad, vals, idx, layout in (
            (grad_values, values, indices, main_layout),
            (grad_aux_values, aux_values, aux_indices, None),
        ):
            if grad is not None and idx.numel() > 0:
                # ReLU's gradient (and JumpReLU's, to pre): only where the value is positive.
                parts.append((torch.where(vals > 0, grad.to(weight.dtype), 0), idx, layout))
        grad_x = grad_w = grad_b = grad_threshold = None
        if parts:
            with torch.autocast(x.device.type, enabled=False):
                if ctx.needs_input_grad[0]:
                    grad_x = torch.stack([gather_sum(idx, g, weight, layout) for g, idx, layout in parts]).sum(0)
                    grad_x = grad_x.to(x.dtype)
                need_w, need_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
                if need_w or need_b:  # one sort of all the parts' entries for both
                    g, idx, rows = _entries(parts)
                    plan = segments(idx, weight.shape[0], rows)
                    if need_w:
                        grad_w = segment_sum(plan, g, x.to(weight.dtype))
                    if need_b:
                        ones = torch.ones(x.shape[0], 1, dtype=weight.dtype, device=weight.device)
                        grad_b = segment_sum(plan, g, ones)[:, 0]
        if threshold is not None and ctx.needs_input_grad[3]:
            grad_threshold = _threshold_gradient(
                threshold, indices, batch_rows, in_window, grad_values, grad_l0, ctx.selection.bandwidth
            )
        return grad_x, grad_w, grad_b, grad_threshold, None, None, None, None, None


def threshold_code(
    pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """JumpReLU's training code of pre [B, κ] with thresholds θ [κ], ragged and in row-major order:
    (values [N], indices [N], batch_rows [N], in_window [N] bool, l0 [B] float). The entries are the
    active ones (pre > θ, value pre) and those in the window |pre − θ| ≤ ε/2 (value 0 where not
    active); l0 counts pre > θ per vector."""
    n_rows, n_latents = pre.shape
    # Every entry kept has pre ≥ θ − ε/2: one pass over pre (compared in float32, even for a bf16
    # pre) finds a superset, and the exact tests run on those few. Each pass over [B, κ] costs
    # about as much as the encoder's matrix product's output does to write.
    flat = flat_nonzero(pre >= threshold - bandwidth)
    candidates = pre.view(-1)[flat]
    indices = flat % n_latents
    distance = candidates.float() - threshold[indices]
    above = distance > 0
    window = distance.abs_() <= bandwidth / 2
    keep = (above | window).nonzero().squeeze(1)
    indices, above, window = indices[keep], above[keep], window[keep]
    rows = flat[keep].div(n_latents, rounding_mode="floor")
    values = torch.where(above, candidates[keep], 0)
    l0 = torch.bincount(rows[above], minlength=n_rows).to(torch.float32)
    return values, indices, rows, window, l0


def _threshold_gradient(
    threshold: torch.Tensor,
    indices: torch.Tensor,
    batch_rows: torch.Tensor,
    in_window: torch.Tensor,
    grad_values: torch.Tensor | None,
    grad_l0: torch.Tensor | None,
    bandwidth: float,
) -> torch.Tensor:
    """θ's straight-through gradient [κ] from the window entries: Σ −(θ/ε)·∂loss/∂f (through the
    code) and Σ −(1/ε)·∂loss/∂L0 of the entry's vector (through the L0)."""
    per_entry = torch.zeros(indices.shape, dtype=torch.float32, device=indices.device)
    if grad_values is not None:
        per_entry -= threshold.float()[indices] / bandwidth * grad_values.float()
    if grad_l0 is not None:
        per_entry -= grad_l0.float()[batch_rows] / bandwidth
    per_entry = torch.where(in_window, per_entry, 0)
    grad = torch.zeros(threshold.shape, dtype=torch.float32, device=threshold.device)
    return grad.index_add_(0, indices, per_entry).to(threshold.dtype)


def _no_rows(device: torch.device) -> torch.Tensor:
    """The `batch_rows` of a code that is not ragged: empty."""
    return torch.empty(0, dtype=torch.int64, device=device)


def _entries(
    parts: list[tuple[torch.Tensor, torch.Tensor, RowLayout | None]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The parts' entries as one flat list: (gradient [N], latent [N], batch row [N])."""
    gradients, latents, rows = [], [], []
    for g, idx, layout in parts:
        gradients.append(g.reshape(-1))
        latents.append(idx.reshape(-1))
        if layout is None:  # a [B, k] code: row b holds entries b·k … b·k + k − 1
            rows.append(torch.arange(idx.shape[0], device=idx.device).repeat_interleave(idx.shape[1]))
        else:
            rows.append(layout.rows)
    return torch.cat(gradients), torch.cat(latents), torch.cat(rows)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 1:
        raise ConfigError("x must have at least one dimension [..., d]")
    return x.reshape(-1, x.shape[-1])


def topk_encode(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest of ReLU(x Wᵀ + b) per vector: (values [..., k], indices [..., k] int64).

    x [..., d]; weight [κ, d] and bias [κ] in nn.Linear's layout (encoder.weight, encoder.bias).
    Values are sorted descending and are ≥ 0 (zeros where fewer than k pre-activations are
    positive). The backward touches only the active rows of the weight; grad x is computed only
    when x requires grad. `dense_from_sparse(values, indices, κ)` gives the dense codes.
    """
    values, indices, _, _ = topk_encode_with_aux(x, weight, bias, k)
    return values, indices


def topk_encode_with_aux(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    aux_mask: torch.Tensor | None = None,
    aux_k: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`topk_encode`, plus the top `aux_k` of ReLU(pre) among the latents that are dead after this
    batch, from the same pre-activations: (values, indices, aux_values, aux_indices).

    `aux_mask` [κ] (bool) marks the latents that are dead unless they fire in this batch; those
    that fire (a positive value in any vector's code) are left out. With dead = aux_mask and not
    fired, the auxiliary values equal `topk_activations(pre.masked_fill(~dead, -inf), aux_k)` at
    aux_indices (zeros where fewer than aux_k dead latents are positive). aux_k is clipped to κ;
    without a mask (or aux_k = 0) the auxiliary outputs are empty [..., 0].
    """
    lead = x.shape[:-1]
    values, indices, aux_values, aux_indices, _, _ = _encode(
        x, weight, bias, None, Selection("topk", k), aux_mask, aux_k
    )
    return tuple(t.reshape(*lead, t.shape[-1]) for t in (values, indices, aux_values, aux_indices))  # type: ignore[return-value]


class SparseCode(NamedTuple):
    """A batch's code from `sparse_encode_with_aux`."""

    values: torch.Tensor
    """[B, k], or [N] for a ragged code (see `layout`)."""
    indices: torch.Tensor
    """The latent of each value."""
    layout: RowLayout | None
    """The batch row of each entry of a ragged code; None for a [B, k] one."""
    aux_values: torch.Tensor
    """[B, aux_k] the dead latents' top pre-activations (ReLU); [B, 0] without an aux_mask."""
    aux_indices: torch.Tensor
    l0: torch.Tensor | None
    """"threshold": [B] the active latents of each vector, with θ's straight-through gradient."""


def sparse_encode_with_aux(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    selection: Selection,
    threshold: torch.Tensor | None = None,
    aux_mask: torch.Tensor | None = None,
    aux_k: int = 0,
    pre: torch.Tensor | None = None,
) -> SparseCode:
    """The training code of a batch x [B, d] that `selection` keeps, with the AuxK part as in
    `topk_encode_with_aux`:
    - "topk": [B, k], as `topk_encode_with_aux`;
    - "batch_topk": the k·B largest activations of the whole batch (`batch_topk`), ragged;
    - "threshold": JumpReLU's relu(pre)·H(pre − θ) with θ = `threshold` [κ], ragged, and the
      per-vector L0. The code also holds the window entries |pre − θ| ≤ bandwidth/2 (value 0 where
      not active); through them θ gets the paper's straight-through gradients, from the code and
      from the L0 (as `dictionaries.jumprelu`'s dense `jumprelu_ste` and `step_ste` give them).
    `pre` [B, κ]: the pre-activations x Wᵀ + b when the caller has computed them already (they are
    not recomputed, and get no gradient: the gradients still reach x, W and b through the code).
    """
    if x.dim() != 2:
        raise ConfigError(f"a training code needs a batch [B, d], got x of shape {list(x.shape)}")
    if (selection.kind == "threshold") != (threshold is not None):
        raise ConfigError("a threshold is needed by, and only by, the 'threshold' selection")
    if threshold is not None and threshold.shape != weight.shape[:1]:
        raise ConfigError(f"threshold must be [{weight.shape[0]}], got {list(threshold.shape)}")
    values, indices, aux_values, aux_indices, rows, l0 = _encode(
        x, weight, bias, threshold, selection, aux_mask, aux_k, pre
    )
    layout = None if selection.kind == "topk" else row_layout(rows, x.shape[0])
    return SparseCode(values, indices, layout, aux_values, aux_indices, l0 if threshold is not None else None)


def _encode(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    threshold: torch.Tensor | None,
    selection: Selection,
    aux_mask: torch.Tensor | None,
    aux_k: int,
    pre: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Check the arguments, then `_SparseEncode` on x flattened to [B, d]."""
    n_latents, d = weight.shape
    if x.shape[-1] != d:
        raise ConfigError(f"x has width {x.shape[-1]} but the encoder weight is [{n_latents}, {d}]")
    if selection.kind != "threshold" and not 1 <= selection.k <= n_latents:
        raise ConfigError(f"k must be in [1, {n_latents}], got {selection.k}")
    aux_k = min(aux_k, n_latents) if aux_mask is not None else 0
    if aux_mask is not None:
        if aux_mask.shape != (n_latents,):
            raise ConfigError(f"aux_mask must be [{n_latents}], got {list(aux_mask.shape)}")
        aux_mask = aux_mask.to(device=x.device, dtype=torch.bool)
    compute_dtype = _compute_dtype(x.device, torch.promote_types(x.dtype, weight.dtype))
    if pre is not None and pre.shape != (x.shape[0], n_latents):
        raise ConfigError(f"pre must be [{x.shape[0]}, {n_latents}], got {list(pre.shape)}")
    outputs: tuple[torch.Tensor, ...] = _SparseEncode.apply(
        _flatten(x), weight, bias, threshold, selection, aux_mask, aux_k, compute_dtype, pre
    )
    return outputs


# --- decoder ---------------------------------------------------------------------------------------
class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        indices: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        layout: RowLayout | None,
    ) -> torch.Tensor:
        with torch.autocast(values.device.type, enabled=False):
            table = weight.t().contiguous()  # [κ, d]: one row per latent
            v = values.to(weight.dtype)
            out = gather_sum(indices, v, table, layout)
            if bias is not None:
                out = out + bias.to(weight.dtype)
        ctx.save_for_backward(v, indices, table)
        ctx.layout = layout
        ctx.has_bias = bias is not None
        ctx.values_dtype = values.dtype
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        v, indices, table = ctx.saved_tensors
        grad_values = grad_w = grad_b = None
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.to(table.dtype)
            if ctx.needs_input_grad[0]:
                grad_values = gather_dots(indices, table, g, ctx.layout).to(ctx.values_dtype)
            if ctx.needs_input_grad[2]:
                grad_w = scatter_outer(indices, v, g, table.shape[0], layout=ctx.layout).t()  # [d, κ]
            if ctx.has_bias and ctx.needs_input_grad[3]:
                grad_b = g.sum(0)
        return grad_values, None, grad_w, grad_b, None


def sparse_decode(
    values: torch.Tensor,
    indices: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    layout: RowLayout | None = None,
) -> torch.Tensor:
    """x̂ [..., d] = Σ_i values[..., i] · W[:, indices[..., i]] + b, from the sparse codes.

    weight [d, κ] and bias [d] in nn.Linear's layout (decoder.weight, decoder.bias); bias None for
    no bias (the AuxK reconstruction). Computed in the weight's dtype, also under autocast.
    Equals `decoder(dense_from_sparse(values, indices, κ))`; gradients reach the values, and the
    weight only at the active columns. A ragged code (values, indices [N] with its `layout`) gives
    x̂ [B, d], each row decoded from its own entries.
    """
    if values.shape != indices.shape:
        raise ConfigError(f"values {list(values.shape)} and indices {list(indices.shape)} differ in shape")
    d = weight.shape[0]
    if layout is not None:
        if values.dim() != 1 or layout.rows.shape != values.shape:
            raise ConfigError(f"a ragged code is flat [N] with one row per entry, got values {list(values.shape)}")
        lead, width = layout.offsets.shape, values.shape[0]
    else:
        lead, width = values.shape[:-1], values.shape[-1]
    if width == 0:  # nothing active (an empty auxiliary set)
        out = weight.new_zeros(*lead, d)
        return out if bias is None else out + bias
    if layout is None:
        values, indices = values.reshape(-1, width), indices.reshape(-1, width)
    out = _SparseDecode.apply(values, indices, weight, bias, layout)
    return out.reshape(*lead, d)


# --- helpers -------------------------------------------------------------------------------------
def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """The flat indices [N] (int64, ascending) of the True entries of a bool tensor. On CPU through
    numpy, whose nonzero was 1.6-2.7× faster than torch's on [4096 × 2048] masks 1.5-3% True (a
    sparse code's candidates), that is 5-8 ms of a ~150 ms training step."""
    if mask.device.type == "cpu" and mask.is_contiguous():
        return torch.from_numpy(np.flatnonzero(mask.numpy()).astype(np.int64, copy=False))
    return mask.reshape(-1).nonzero().squeeze(1)


BATCH_TOPK_SAMPLE = 65_536
"""`batch_topk` guesses its cut from the first rows' pre-activations, about this many of them."""


def batch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The k·B largest entries of pre [B, κ] over the whole batch, as a ragged code: (values [N],
    indices [N], batch_rows [N]) with N = min(k·B, B·κ), in row-major order (by row, then by latent).
    Values are pre's (not clamped). Ties at the cut are broken towards the earlier entries.

    A top-k·B over all B·κ entries, or a per-row top-(c·k) to narrow it first, dominated the training
    step. Instead a cut is guessed from the first rows (the value that 2k entries per row reach
    there, BATCH_TOPK_SAMPLE entries in all), the entries at or above it over the whole batch are the
    candidates, and the top k·B is
    taken among them: exact whenever they are at least k·B (else the guess is lowered, twice as
    many per row each time). One or two host synchronisations (to size the candidates).
    """
    n_rows, n_latents = pre.shape
    flat = pre.reshape(-1)
    total = min(k * n_rows, flat.numel())
    sample_rows = min(n_rows, max(1, BATCH_TOPK_SAMPLE // n_latents))
    sample = pre[:sample_rows].reshape(-1)
    quota = 2 * k * sample_rows
    while True:
        if quota >= sample.numel():
            candidates = torch.arange(flat.numel(), device=pre.device)
            break
        cut = sample.topk(quota, sorted=False).values.min()
        candidates = flat_nonzero(flat >= cut)
        if candidates.numel() >= total:
            break
        quota *= 2
    values = flat[candidates]
    if candidates.numel() > total:
        kth = values.kthvalue(values.numel() - total + 1).values  # the total-th largest
        above, tied = values > kth, values == kth
        keep = above | (tied & (tied.cumsum(0) <= total - above.sum()))
        candidates, values = candidates[keep], values[keep]
    return values, candidates % n_latents, candidates.div(n_latents, rounding_mode="floor")


def dense_from_sparse(
    values: torch.Tensor, indices: torch.Tensor, n_latents: int, layout: RowLayout | None = None
) -> torch.Tensor:
    """The dense codes [..., κ] (or [B, κ] from a ragged code and its `layout`): values scattered to
    their indices, zeros elsewhere (differentiable)."""
    if layout is not None:
        out = values.new_zeros(layout.offsets.shape[0] * n_latents)
        return out.index_add(0, layout.rows * n_latents + indices, values).view(-1, n_latents)
    out = values.new_zeros(*values.shape[:-1], n_latents)
    return out.scatter(-1, indices, values)


def fired_latents(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """[κ] bool: the latents with a positive value in any vector (no host sync)."""
    counts = torch.zeros(n_latents, dtype=torch.int32, device=values.device)
    counts.index_add_(0, indices.reshape(-1), (values.detach() > 0).reshape(-1).to(torch.int32))
    return counts > 0
