"""Which hook of a running model a dictionary reads, checked against the model before any real work.

Text features and steering take a model from the caller (any spec the user names), so the hook
the dictionary recorded may not exist in it, or may have another width. Both are refused here
with the hook's name and what the model does have, instead of a KeyError or a shape error from
inside a forward pass.
"""

from __future__ import annotations

import difflib

import torch

from activation_cache import LanguageModel
from dictionaries import Dictionary
from interp_sae.errors import ConfigError
from interp_sae.provenance import resolve
from interp_sae.splice import check_model_width

_SUGGESTIONS = 5


def resolve_model_hook(
    lm: LanguageModel, dictionary: Dictionary, hook: str | None = None, *, allow_other_hook: bool = False
) -> str:
    """The hook to run `dictionary` at in `lm`: `hook`, else the one the dictionary recorded;
    refused (ConfigError) when the model has no such hook or its width is not the dictionary's d."""
    hook, _ = resolve(dictionary, None, hook, allow_other_hook=allow_other_hook)
    hooks = list(lm.bridge.hook_dict)
    if hook not in hooks:
        near = difflib.get_close_matches(hook, hooks, n=_SUGGESTIONS, cutoff=0.6)
        examples = near or [h for h in hooks if h.endswith("hook_resid_post")][:_SUGGESTIONS] or hooks[:_SUGGESTIONS]
        raise ConfigError(
            f"the model {lm.info.get('id')!r} has no hook {hook!r} (it has {len(hooks)} hooks, e.g. {examples}). "
            "Pass --hook with one of its hooks, or the model the dictionary was trained on (--model)"
        )
    check_model_width(dictionary, hook_width(lm, hook), hook)
    return hook


@torch.no_grad()
def hook_width(lm: LanguageModel, hook: str) -> int:
    """The last dimension of `hook`'s activation, from a one-token forward pass (BOS alone)."""
    widths: list[int] = []

    def record(activation: torch.Tensor, hook: object) -> None:
        widths.append(activation.shape[-1])

    ids = torch.tensor([[lm.bos_token_id]], device=lm.device)
    lm.bridge.run_with_hooks(ids, fwd_hooks=[(hook, record)], return_type=None)
    return widths[0]
