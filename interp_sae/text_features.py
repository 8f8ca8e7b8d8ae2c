"""Which features fire on a text: per token, and over the whole text.

The text runs through the model as the store packs a document (BOS first); BOS is run but not
encoded or shown, since dictionaries never train on it. A feature *fires* on a token as the
dictionary's `inspection_batch` says, exactly as in `interp-sae inspect`: a non-zero activation
for SAEs; for variational dictionaries such as VAEase (whose signed gated mean is rarely exactly
0) the low-variance group of the token's latents. Features are ranked by the inspector's rank
scores (`rank_by`, default ``abs``: the size of the feature's contribution, whatever its sign).
"""

from __future__ import annotations

from typing import Any

import torch

from activation_cache import LanguageModel
from dictionaries import Dictionary
from interp_sae.ablation import text_sequence
from interp_sae.errors import ConfigError
from interp_sae.inspect_stats import resolve_rank_by
from interp_sae.model_hooks import resolve_model_hook
from interp_sae.provenance import TrainedOn


@torch.no_grad()
def features_on_text(
    lm: LanguageModel,
    dictionary: Dictionary,
    text: str,
    *,
    hook: str | None = None,
    top_n: int = 5,
    rank_by: str | None = None,
    allow_other_hook: bool = False,
) -> dict[str, Any]:
    """The JSON-ready features of `text` at `hook` (default: the dictionary's recorded hook):

    ``per_token``: each token's top_n firing features, best rank score first; ``top_features``:
    the top_n features by their best rank score over the text, with the activation there
    (``max``), its position, and the sum and count over the tokens where the feature fires;
    ``activations``: each top feature's activation at every token. Positions index ``tokens``
    (BOS not included). Moves the dictionary to the model's device. A text longer than the
    model's context is refused."""
    if top_n < 1:
        raise ConfigError(f"top_n must be ≥ 1, got {top_n}")
    rank_by = resolve_rank_by(dictionary, rank_by)
    hook = resolve_model_hook(lm, dictionary, hook, allow_other_hook=allow_other_hook)
    ids, _ = text_sequence(lm, text)
    if len(ids) == 1:
        raise ConfigError("the text is empty: it has no tokens to encode")
    if len(ids) > lm.n_ctx:
        raise ConfigError(
            f"the text is {len(ids) - 1} tokens (plus BOS), more than the model's context of {lm.n_ctx}: "
            "pass a shorter text, or split it"
        )
    dictionary = dictionary.to(lm.device)
    _, cache = lm.bridge.run_with_cache(torch.tensor([ids], device=lm.device), names_filter=lambda n: n == hook)
    x = cache[hook][0, 1:].float()  # every position but BOS
    values, fires, auxiliary = dictionary.inspection_batch(x)
    scores = torch.full_like(values, -torch.inf)
    scores[fires] = dictionary.rank_scores(rank_by, values[fires], None if auxiliary is None else auxiliary[fires])
    tokens = [lm.tokenizer.decode([t]) for t in ids[1:]]
    top = _top_features(values.cpu(), fires.cpu(), scores.cpu(), top_n)
    return {
        "text": text,
        "hook": hook,
        "model": lm.info.get("id") or TrainedOn.of(dictionary).model,
        "architecture": dictionary.architecture,
        "rank_by": rank_by,
        "tokens": tokens,
        "per_token": [
            {"token": token, "position": i, "features": _token_features(values[i].cpu(), scores[i].cpu(), top_n)}
            for i, token in enumerate(tokens)
        ],
        "top_features": top,
        "activations": {str(f["feature"]): values[:, f["feature"]].tolist() for f in top},
    }


def _ranked(scores: torch.Tensor, n: int) -> list[int]:
    """Indices of the n best finite scores, best first; ties go to the smaller index."""
    order = torch.sort(scores, descending=True, stable=True).indices[:n]
    return [int(i) for i in order if torch.isfinite(scores[i])]


def _token_features(values: torch.Tensor, scores: torch.Tensor, top_n: int) -> list[dict[str, Any]]:
    return [{"feature": j, "activation": float(values[j])} for j in _ranked(scores, top_n)]


def _top_features(values: torch.Tensor, fires: torch.Tensor, scores: torch.Tensor, top_n: int) -> list[dict[str, Any]]:
    """[T, κ] inputs → the top_n features by their best score over the T tokens."""
    best = scores.max(0).values
    where = (scores == best).int().argmax(0)  # the first token that reaches it: ties go to the earlier
    firing_values = values * fires
    return [
        {
            "feature": j,
            "max": float(values[where[j], j]),
            "max_position": int(where[j]),
            "sum": float(firing_values[:, j].sum()),
            "count": int(fires[:, j].sum()),
        }
        for j in _ranked(best, top_n)
    ]
