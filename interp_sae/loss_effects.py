"""Every feature's effect on the model's loss, estimated at once by attribution (a first-order
Taylor step, as in attribution patching and Marks et al.'s sparse feature circuits).

Zero-ablating feature j with the reconstruction error kept moves the hook's output from x to
x − a_j·d_j at every document position. To first order the mean next-token loss then changes by

    Δ_j ≈ −Σ_t a_j(x_t) · (d_j · ∂L/∂x_t)

so one forward and one backward pass per batch of rows give Δ_j for all κ features, where real
ablation needs a forward pass per feature. It is an estimate: exact for a feature whose
contribution is small, less so for a large one (the report says "≈"). Rows, positions and the
predictions that count follow loss recovered's rules (interp_sae.splice), on the same held-out
rows, so the numbers sit beside it like for like. Positive = the model does worse without it.
"""

from __future__ import annotations

from typing import Any

import torch

from activation_cache import ActivationStore, LanguageModel, Split
from dictionaries import Dictionary
from interp_sae.splice import check_model_width, prediction_mask, token_losses

_POSITIONS_PER_CHUNK = 2048  # bounds the [positions, κ] activations held at once


def attributed_loss_effects(
    lm: LanguageModel,
    dictionary: Dictionary,
    store: ActivationStore,
    hook: str,
    split: Split,
    *,
    side: str = "validation",
    max_rows: int = 64,
    batch_rows: int = 8,
) -> torch.Tensor:
    """float64 [κ]: each feature's estimated Δ mean loss per prediction when zero-ablated (see module docstring)."""
    ids, doc_mask, side_mask = (torch.from_numpy(a) for a in store.rows(side, split, max_rows))
    ids = ids.long()
    effects = torch.zeros(dictionary.config.n_latents, dtype=torch.float64)
    count = 0
    for lo in range(0, len(ids), batch_rows):
        batch, positions = ids[lo : lo + batch_rows].to(lm.device), doc_mask[lo : lo + batch_rows].to(lm.device)
        counted = prediction_mask(positions) & side_mask[lo : lo + batch_rows, 1:].to(lm.device)
        x, grad = _activation_and_loss_gradient(lm, hook, batch, counted)
        check_model_width(dictionary, x.shape[-1], hook)
        effects += _batch_effects(dictionary, x[positions], grad[positions])
        count += int(counted.sum())
    return effects / max(count, 1)


def _activation_and_loss_gradient(
    lm: LanguageModel, hook: str, ids: torch.Tensor, counted: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The hook's output [B, T, d] and the gradient of the summed counted loss with respect to it."""
    captured: dict[str, torch.Tensor] = {}

    def capture(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        # A fresh leaf: the gradient stops here, and the model's own weights need none.
        captured["x"] = activation.detach().requires_grad_(True)
        return captured["x"]

    with torch.enable_grad():
        logits = lm.bridge.run_with_hooks(ids, fwd_hooks=[(hook, capture)], return_type="logits").float()
        loss = token_losses(logits, ids)[counted].sum()
        (grad,) = torch.autograd.grad(loss, captured["x"])
    return captured["x"].detach(), grad


@torch.no_grad()
def _batch_effects(dictionary: Dictionary, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Σ over positions of −a_j · (d_j · g) for every feature j: float64 [κ] on the CPU."""
    directions = dictionary.feature_directions.float()
    total = torch.zeros(dictionary.config.n_latents, dtype=torch.float64, device=x.device)
    for lo in range(0, len(x), _POSITIONS_PER_CHUNK):
        features = dictionary.encode(x[lo : lo + _POSITIONS_PER_CHUNK].float())
        slopes = grad[lo : lo + _POSITIONS_PER_CHUNK].float() @ directions.T  # d_j · g per position
        total -= (features * slopes).sum(0).double()
    return total.cpu()
