"""Direct logit effects: each feature direction read through the final norm and the unembedding.

The bridge runs the raw Hugging Face weights, so we apply by hand what TransformerLens's weight
processing folds in (`fold_ln`, `center_writing_weights`, `center_unembed`) and read a direction
v ∈ R^d as a residual-stream vector, as a TransformerLens user computing ``W_dec @ W_U`` on a
processed HookedTransformer would:

    effect(v) = ((P v) ⊙ w_ln) @ W_U,   then centred over the vocabulary

- P centres v across d_model for a LayerNorm (LayerNorm subtracts the mean of its input, so only
  the centred part of v can reach the logits); it is the identity for an RMSNorm.
- w_ln is the final norm's scale. The norm's division by the token's residual norm is left out:
  it depends on the token, not the feature, and rescales every logit alike.
- The norm's bias and the unembedding's bias are left out: they do not depend on v.
- Centring over the vocabulary (TransformerLens's ``center_unembed``) removes a shift that
  softmax ignores, so effects compare across features; it does not change the ranking.

This is the *direct* effect through the residual stream, meaningful for hooks that are, or
write into, the residual stream (``hook_resid_*``, ``hook_mlp_out``, ``hook_attn_out``).
"""

from __future__ import annotations

from typing import Any

import torch

from activation_cache import LanguageModel
from interp_sae.errors import ConfigError


def unembed_directions(lm: LanguageModel, directions: torch.Tensor) -> torch.Tensor:
    """[κ, vocab] logit effects of residual-stream directions [κ, d_model] (see module docstring)."""
    bridge = lm.bridge
    d_model = int(bridge.cfg.d_model)
    if directions.shape[-1] != d_model:
        raise ConfigError(
            f"width mismatch: logit effects read directions of width d={directions.shape[-1]} through the "
            f"unembedding, which takes the model's d_model={d_model}. Only hooks on the residual stream "
            f"(hook_resid_*, hook_mlp_out, hook_attn_out) have logit effects"
        )
    with torch.no_grad():
        w_u = bridge.W_U.float()
        v = directions.to(w_u.device).float()
        if bridge.cfg.normalization_type in ("LN", "LNPre"):
            v = v - v.mean(-1, keepdim=True)
        scale = getattr(bridge.ln_final, "weight", None)
        if scale is not None:
            v = v * scale.float()
        logits = v @ w_u
        return logits - logits.mean(-1, keepdim=True)


def logit_effects(
    lm: LanguageModel, directions: torch.Tensor, top_n: int = 10, chunk: int = 256
) -> list[dict[str, list[dict[str, Any]]]]:
    """Per feature {"promoted": [...], "suppressed": [...]}, each a list of
    {"token_id", "token", "logit"} (the top_n largest and smallest effects)."""
    results = []
    decode = lm.tokenizer.decode
    for lo in range(0, len(directions), chunk):
        effects = unembed_directions(lm, directions[lo : lo + chunk])
        n = min(top_n, effects.shape[-1])
        top, bottom = effects.topk(n, dim=-1), effects.topk(n, dim=-1, largest=False)
        for values, ids, low_values, low_ids in zip(
            top.values.tolist(), top.indices.tolist(), bottom.values.tolist(), bottom.indices.tolist()
        ):
            results.append(
                {
                    "promoted": [{"token_id": t, "token": decode([t]), "logit": v} for t, v in zip(ids, values)],
                    "suppressed": [
                        {"token_id": t, "token": decode([t]), "logit": v} for t, v in zip(low_ids, low_values)
                    ],
                }
            )
    return results
