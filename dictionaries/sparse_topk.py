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
dead-latent loss of topk_aux, BatchTopK and Matryoshka) from the same dense product, with
gradients through both sets. With `over_batch=True` the code keeps the k·B largest activations of
the whole batch (BatchTopK) instead of k per vector (`batch_topk`): each row then holds as many
slots as the row that keeps the most, with zeros in the slots a row does not use.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from interp_sae.errors import ConfigError

ScatterMethod = Literal["segment", "index_add"]


# --- primitives ----------------------------------------------------------------------------------
class Segments(NamedTuple):
    """The B·k entries of indices [B, k] grouped by value (see `segments`)."""

    order: torch.Tensor
    """[B·k]: indices.flatten()[order] ascends; stable, so each group keeps batch order."""
    source_rows: torch.Tensor
    """[B·k]: the batch row b of each entry, in that order."""
    offsets: torch.Tensor
    """[n_rows]: where group j starts in that order."""


def segments(indices: torch.Tensor, n_rows: int) -> Segments:
    """Group the entries of indices [B, k] by value, for any number of `segment_sum`s over them."""
    flat = indices.reshape(-1)
    # On CPU, sort as one row of a 2-D tensor: a serial comparison sort. The 1-D integer sort is a
    # parallel radix sort whose many thread barriers stall when the cores are shared (10-100× slower).
    _, order = torch.sort(flat[None] if flat.device.type == "cpu" else flat, stable=True)
    order = order.reshape(-1)
    counts = torch.bincount(flat, minlength=n_rows)
    return Segments(order, order.div(indices.shape[1], rounding_mode="floor"), torch.cumsum(counts, 0) - counts)


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
) -> torch.Tensor:
    """out [n_rows, d] with out[j] = Σ_{b,i: indices[b,i] = j} weights[b, i] · rhs[b].

    That is Gᵀ rhs for the sparse G [B, n_rows] with G[b, indices[b, i]] = weights[b, i] (repeated
    indices in a row add up). indices, weights [B, k]; rhs [B, d]; the result has rhs's dtype.
    "segment" sorts the entries by row (see `segment_sum`); "index_add" is the plain reference
    (a [B·k, d] intermediate, atomics on GPU).
    """
    d = rhs.shape[1]
    if method == "segment":
        return segment_sum(segments(indices, n_rows), weights, rhs)
    if method == "index_add":
        source = (weights.to(rhs.dtype)[:, :, None] * rhs[:, None, :]).reshape(-1, d)
        return torch.zeros(n_rows, d, dtype=rhs.dtype, device=rhs.device).index_add_(0, indices.reshape(-1), source)
    raise ConfigError(f"unknown scatter method {method!r}")


def gather_dots(indices: torch.Tensor, table: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """out [B, k] with out[b, i] = table[indices[b, i]] · rhs[b]; table [n, d], rhs [B, d].

    The per_sample_weights gradient of embedding_bag, which needs no [B, k, d] intermediate.
    """
    with torch.enable_grad():
        weights = torch.zeros(indices.shape, dtype=table.dtype, device=table.device, requires_grad=True)
        out = F.embedding_bag(indices, table.detach(), per_sample_weights=weights, mode="sum")
        (dots,) = torch.autograd.grad(out, weights, rhs.to(table.dtype))
    return dots


def gather_sum(indices: torch.Tensor, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """out [B, d] with out[b] = Σ_i weights[b, i] · table[indices[b, i]]; table [n, d]."""
    return F.embedding_bag(indices, table, per_sample_weights=weights.to(table.dtype), mode="sum")


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype nn.Linear would compute in here: the autocast dtype if autocast is on."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


# --- encoder ---------------------------------------------------------------------------------------
class _TopKEncode(torch.autograd.Function):
    """(x, W_enc, b_enc) → top-k of ReLU(x W_encᵀ + b_enc) as (values, indices) (per vector, or k·B
    over the batch), and optionally the top aux_k of the pre-activations of the latents in aux_mask
    that did not fire, as (aux_values, aux_indices)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        k: int,
        aux_mask: torch.Tensor | None,
        aux_k: int,
        over_batch: bool,
        compute_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            w = weight.to(compute_dtype)
            xc = x.to(compute_dtype)
            pre = xc @ w.t() if bias is None else torch.addmm(bias.to(compute_dtype), xc, w.t())
            # top-k of pre, then ReLU: the same codes as top-k of ReLU(pre) (where fewer than k are
            # positive, both fill with zeros, only the indices of those zeros differ).
            values, indices = batch_topk(pre, k) if over_batch else pre.topk(k, dim=-1)
            values.clamp_(min=0)
            if aux_mask is not None and aux_k > 0:
                # Dead after this batch: the candidates that did not fire in it.
                dead = aux_mask & ~fired_latents(values, indices, pre.shape[1])
                aux_values, aux_indices = pre.masked_fill_(~dead, float("-inf")).topk(aux_k, dim=-1)
                aux_values.clamp_(min=0)
            else:
                aux_values = values.new_empty(values.shape[0], 0)
                aux_indices = indices.new_empty(indices.shape[0], 0)
        del pre
        ctx.save_for_backward(x, weight, values, indices, aux_values, aux_indices)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(indices, aux_indices)
        return values, indices, aux_values, aux_indices

    @staticmethod
    def backward(
        ctx: Any,
        grad_values: torch.Tensor | None,
        _grad_indices: Any,
        grad_aux_values: torch.Tensor | None,
        _grad_aux_indices: Any,
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, values, indices, aux_values, aux_indices = ctx.saved_tensors
        parts_g, parts_i = [], []
        for grad, vals, idx in ((grad_values, values, indices), (grad_aux_values, aux_values, aux_indices)):
            if grad is not None and idx.shape[1] > 0:
                # ReLU's gradient: only where the value is positive.
                parts_g.append(torch.where(vals > 0, grad.to(weight.dtype), 0))
                parts_i.append(idx)
        grad_x = grad_w = grad_b = None
        if parts_g:
            g = parts_g[0] if len(parts_g) == 1 else torch.cat(parts_g, dim=1)
            idx = parts_i[0] if len(parts_i) == 1 else torch.cat(parts_i, dim=1)
            with torch.autocast(x.device.type, enabled=False):
                if ctx.needs_input_grad[0]:
                    grad_x = gather_sum(idx, g, weight).to(x.dtype)
                need_w, need_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
                plan = segments(idx, weight.shape[0]) if need_w or need_b else None  # one sort for both
                if plan is not None and need_w:
                    grad_w = segment_sum(plan, g, x.to(weight.dtype))
                if plan is not None and need_b:
                    ones = torch.ones(x.shape[0], 1, dtype=weight.dtype, device=weight.device)
                    grad_b = segment_sum(plan, g, ones)[:, 0]
        return grad_x, grad_w, grad_b, None, None, None, None, None


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
    *,
    over_batch: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`topk_encode`, plus the top `aux_k` of ReLU(pre) among the latents that are dead after this
    batch, from the same pre-activations: (values, indices, aux_values, aux_indices).

    `aux_mask` [κ] (bool) marks the latents that are dead unless they fire in this batch; those
    that fire (a positive value in any vector's code) are left out. With dead = aux_mask and not
    fired, the auxiliary values equal `topk_activations(pre.masked_fill(~dead, -inf), aux_k)` at
    aux_indices (zeros where fewer than aux_k dead latents are positive). aux_k is clipped to κ;
    without a mask (or aux_k = 0) the auxiliary outputs are empty [..., 0].
    over_batch: keep the k·B largest activations of the batch (`batch_topk`, x must be [B, d]) instead
    of k per vector; values and indices are then [B, M], M the most any vector keeps.
    """
    n_latents, d = weight.shape
    if x.shape[-1] != d:
        raise ConfigError(f"x has width {x.shape[-1]} but the encoder weight is [{n_latents}, {d}]")
    if not 1 <= k <= n_latents:
        raise ConfigError(f"k must be in [1, {n_latents}], got {k}")
    aux_k = min(aux_k, n_latents) if aux_mask is not None else 0
    if aux_mask is not None:
        if aux_mask.shape != (n_latents,):
            raise ConfigError(f"aux_mask must be [{n_latents}], got {list(aux_mask.shape)}")
        aux_mask = aux_mask.to(device=x.device, dtype=torch.bool)
    lead = x.shape[:-1]
    compute_dtype = _compute_dtype(x.device, torch.promote_types(x.dtype, weight.dtype))
    outputs = _TopKEncode.apply(_flatten(x), weight, bias, k, aux_mask, aux_k, over_batch, compute_dtype)
    values, indices, aux_values, aux_indices = (t.reshape(*lead, t.shape[-1]) for t in outputs)
    return values, indices, aux_values, aux_indices


# --- decoder ---------------------------------------------------------------------------------------
class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        indices: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        with torch.autocast(values.device.type, enabled=False):
            table = weight.t().contiguous()  # [κ, d]: one row per latent
            v = values.to(weight.dtype)
            out = gather_sum(indices, v, table)
            if bias is not None:
                out = out + bias.to(weight.dtype)
        ctx.save_for_backward(v, indices, table)
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
                grad_values = gather_dots(indices, table, g).to(ctx.values_dtype)
            if ctx.needs_input_grad[2]:
                grad_w = scatter_outer(indices, v, g, table.shape[0]).t()  # [d, κ]
            if ctx.has_bias and ctx.needs_input_grad[3]:
                grad_b = g.sum(0)
        return grad_values, None, grad_w, grad_b


def sparse_decode(
    values: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x̂ [..., d] = Σ_i values[..., i] · W[:, indices[..., i]] + b, from the sparse codes.

    weight [d, κ] and bias [d] in nn.Linear's layout (decoder.weight, decoder.bias); bias None for
    no bias (the AuxK reconstruction). Computed in the weight's dtype, also under autocast.
    Equals `decoder(dense_from_sparse(values, indices, κ))`; gradients reach the values, and the
    weight only at the active columns.
    """
    if values.shape != indices.shape:
        raise ConfigError(f"values {list(values.shape)} and indices {list(indices.shape)} differ in shape")
    d = weight.shape[0]
    lead = values.shape[:-1]
    k = values.shape[-1]
    if k == 0:  # nothing active (an empty auxiliary set)
        out = weight.new_zeros(*lead, d)
        return out if bias is None else out + bias
    out = _SparseDecode.apply(values.reshape(-1, k), indices.reshape(-1, k), weight, bias)
    return out.reshape(*lead, d)


# --- helpers -------------------------------------------------------------------------------------
BATCH_TOPK_CANDIDATES = 4
"""`batch_topk` first offers each vector's 4·k largest pre-activations (doubled while not enough)."""


def batch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k·B largest entries of pre [B, κ] over the whole batch, as per-row (values [B, M],
    indices [B, M]): M is the most slots any row keeps, and a row's slots past its own count hold
    value 0. Values are pre's (not clamped), in descending order within a row.

    Instead of one top-k·B over all B·κ entries (a large selection that dominated the step), each
    row offers its c·k largest as candidates (c = BATCH_TOPK_CANDIDATES) and the top k·B is taken
    among those. That is exact unless some row had all its candidates kept (then a value it did not
    offer might rank too): c doubles until no row is full, or every entry is a candidate. One host
    synchronisation per call, to read M.
    """
    rows, n_latents = pre.shape
    width = min(n_latents, BATCH_TOPK_CANDIDATES * k)
    slots = torch.arange(1, n_latents + 1, device=pre.device)
    while True:
        values, indices = pre.topk(width, dim=-1)  # sorted: a row keeps a prefix of its candidates
        chosen = values.flatten().topk(k * rows, sorted=False).indices
        kept = torch.zeros(rows * width, dtype=torch.bool, device=pre.device).index_fill_(0, chosen, True)
        kept = kept.view(rows, width)
        used = int((kept * slots[:width]).amax())  # the last kept slot of any row, 1-based
        if used < width or width == n_latents:
            break
        width = min(n_latents, 2 * width)
    return values[:, :used].masked_fill(~kept[:, :used], 0), indices[:, :used].contiguous()


def split_slots(
    values: torch.Tensor, indices: torch.Tensor, ends: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A sparse code (values, indices) [B, M] split by latent range: for each end e_g (strictly
    increasing, the last at least κ), the slots whose latent lies in [e_{g−1}, e_g), compacted to
    [B, M_g] (M_g the most any row has; zeros pad). Slots with value 0 are dropped. Gradients reach
    `values`. One host synchronisation, to read the widths.
    """
    n_groups, width = len(ends), values.shape[1]
    boundaries = torch.tensor(ends[:-1], dtype=indices.dtype, device=indices.device)
    group = torch.bucketize(indices, boundaries, right=True).masked_fill_(values == 0, n_groups)
    group, order = torch.sort(group, dim=1, stable=True)
    values, indices = values.gather(1, order), indices.gather(1, order)
    counts = F.one_hot(group, n_groups + 1).sum(1)  # [B, groups + 1]
    starts = counts.cumsum(1) - counts
    parts = []
    for g, group_width in enumerate(counts[:, :n_groups].amax(0).tolist()):
        slot = torch.arange(group_width, device=values.device)
        position = (starts[:, g : g + 1] + slot).clamp(max=width - 1)
        parts.append((values.gather(1, position) * (slot < counts[:, g : g + 1]), indices.gather(1, position)))
    return parts


def dense_from_sparse(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """The dense codes [..., κ]: values scattered to their indices, zeros elsewhere (differentiable)."""
    out = values.new_zeros(*values.shape[:-1], n_latents)
    return out.scatter(-1, indices, values)


def fired_latents(values: torch.Tensor, indices: torch.Tensor, n_latents: int) -> torch.Tensor:
    """[κ] bool: the latents with a positive value in any vector (no host sync)."""
    counts = torch.zeros(n_latents, dtype=torch.int32, device=values.device)
    counts.index_add_(0, indices.reshape(-1), (values.detach() > 0).reshape(-1).to(torch.int32))
    return counts > 0
