"""Ablate features inside the running model and measure what changes, token by token.

Each sequence runs twice with the dictionary spliced in at its hook (see `splice`): once
ablating nothing (the baseline: with the error term on, the clean model exactly) and once with
the features set to zero or to their mean. Per next-token prediction we report the loss before
and after, their difference, the change of the actual next token's logit, and the KL divergence
between the two predicted distributions; the predictions that move most (largest KL) also list
the vocabulary tokens whose log-probabilities rose and fell most.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from activation_cache import ActivationStore, LanguageModel
from dictionaries import Dictionary
from interp_sae.errors import ConfigError
from interp_sae.splice import Splice, prediction_mask, run_logits, token_losses


def text_sequence(lm: LanguageModel, text: str) -> tuple[list[int], list[bool]]:
    """(token ids, document mask) of a text, BOS first, as the store packs it."""
    ids = lm.tokenize([text])[0]
    return [lm.bos_token_id] + ids, [False] + [True] * len(ids)


def context_sequence(store: ActivationStore, index: int, after: int) -> tuple[list[int], list[bool]]:
    """The packed row of stored vector `index`, up to `after` tokens past it (later tokens cannot
    change earlier predictions, so the rest of the row is not run)."""
    shard, local = store.locate(index)
    row, pos = divmod(local, store.context_length)
    tokens = store.tokens(shard)
    end = pos + after + 1
    return tokens.token_ids[row, :end].tolist(), (tokens.doc_ids[row, :end] >= 0).tolist()


@torch.no_grad()
def ablate(
    lm: LanguageModel,
    dictionary: Dictionary,
    hook: str,
    sequences: Sequence[tuple[list[int], list[bool]]],
    features: Sequence[int],
    *,
    mode: str = "zero",
    means: torch.Tensor | None = None,
    with_error: bool = True,
    top_n: int = 5,
) -> dict[str, Any]:
    """Ablate `features` on each (token ids, document mask) sequence; returns the JSON-ready
    result (schema: docs/INSPECT_SCHEMA.md, "ablation"). Moves the dictionary to the model's device."""
    if not features:
        raise ConfigError("no feature to ablate: give at least one feature index")
    dictionary = dictionary.to(lm.device)
    baseline = Splice(dictionary, hook, with_error=with_error)
    ablated = Splice(dictionary, hook, with_error=with_error, ablate=features, mode=mode, means=means)
    results = []
    for ids, mask in sequences:
        ids_t, mask_t = torch.tensor([ids]), torch.tensor([mask], device=lm.device)
        before = run_logits(lm, ids_t, [(hook, baseline.for_mask(mask_t))])[0]
        after = run_logits(lm, ids_t, [(hook, ablated.for_mask(mask_t))])[0]
        results.append(
            _compare(
                lm,
                ids,
                prediction_mask(mask_t)[0],
                before,
                after,
                top_n,
                ablated.recorded()[0].T.tolist(),
                features,
            )
        )
    deltas = [p["delta_loss"] for r in results for p in r["predictions"]]
    return {
        "hook": hook,
        "features": list(features),
        "mode": mode,
        "with_error": with_error,
        "mean_delta_loss": float(np.mean(deltas)) if deltas else None,
        "sequences": results,
    }


def _compare(
    lm: LanguageModel,
    ids: list[int],
    counted: torch.Tensor,
    before: torch.Tensor,
    after: torch.Tensor,
    top_n: int,
    activations: list[list[float]],
    features: Sequence[int],
) -> dict[str, Any]:
    decode = lm.tokenizer.decode
    tokens = [decode([t]) for t in ids]
    ids_t = torch.tensor([ids], device=before.device)
    loss_before, loss_after = token_losses(before[None], ids_t)[0], token_losses(after[None], ids_t)[0]
    next_ids = ids_t[0, 1:, None]
    delta_logit = (after[:-1].gather(-1, next_ids) - before[:-1].gather(-1, next_ids)).squeeze(-1)
    log_p, log_q = before[:-1].log_softmax(-1), after[:-1].log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    positions = counted.nonzero().squeeze(-1).tolist()
    predictions = [
        {
            "position": i,
            "token": tokens[i],
            "next_token": tokens[i + 1],
            "loss_before": float(loss_before[i]),
            "loss_after": float(loss_after[i]),
            "delta_loss": float(loss_after[i] - loss_before[i]),
            "delta_logit": float(delta_logit[i]),
            "kl": float(kl[i]),
        }
        for i in positions
    ]
    moved = sorted(positions, key=lambda i: -float(kl[i]))[:top_n]
    return {
        "text": lm.tokenizer.decode(ids),
        "token_ids": ids,
        "tokens": tokens,
        "feature_activations": {str(j): values for j, values in zip(features, activations)},
        "predictions": predictions,
        "most_moved": [_moved(decode, i, log_p[i], log_q[i], float(kl[i]), tokens, top_n) for i in moved],
    }


def _moved(
    decode, position: int, log_p: torch.Tensor, log_q: torch.Tensor, kl: float, tokens: list[str], top_n: int
) -> dict[str, Any]:
    change = log_q - log_p
    rose, fell = change.topk(top_n), change.topk(top_n, largest=False)
    return {
        "position": position,
        "token": tokens[position],
        "next_token": tokens[position + 1],
        "kl": kl,
        "rose": [
            {"token": decode([t]), "delta_log_prob": v} for t, v in zip(rose.indices.tolist(), rose.values.tolist())
        ],
        "fell": [
            {"token": decode([t]), "delta_log_prob": v} for t, v in zip(fell.indices.tolist(), fell.values.tolist())
        ],
    }
