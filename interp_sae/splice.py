"""Run the language model with a dictionary spliced in at its hook: loss recovered, feature ablation.

Splicing replaces the hook's activation x by the reconstruction x̂ = decode(encode(x)). With
``with_error=True`` the reconstruction error x − x̂ is added back, so the output is x plus the
change of the ablated features' decoder contributions, Σ_j (a_j − f_j) · d_j, computed exactly
that way: ablating nothing gives x bit for bit, and only the ablated features change anything.

Positions: only document tokens are spliced (BOS, separators and padding keep their clean
activation: dictionaries are trained without them), and a next-token prediction counts in a loss
only when both the token it is made at and the token it predicts are document tokens. Clean,
spliced and ablated runs all use the same rule, so their losses compare like for like.
Positions whose activation is longer than ``max_norm`` keep their clean activation too (in the
spliced and the zero-ablated run alike): the massive-activation tokens a dictionary was trained
without; their features are still encoded and recorded. By default ``max_norm`` is the cap the
dictionary recorded (`max_input_norm`, from `TrainConfig.max_norm_ratio`), if any; pass
``math.inf`` to splice every position of such a dictionary.

Ablation modes: ``zero`` sets the features to 0; ``mean`` sets them to their mean activation
over a store split (`FeatureStatistics.mean`, what `interp-sae inspect` records).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from activation_cache import ActivationStore, LanguageModel
from dictionaries import Dictionary
from interp_sae.errors import ConfigError
from interp_sae.provenance import resolve

ABLATION_MODES = ("zero", "mean")


class Splice:
    """A TransformerLens hook function that splices `dictionary` in at `hook`, at the positions of `mask`.

    Call `for_mask` before each forward pass; after it, `ablated_activations` holds the ablated
    features' activations ([B, T, n] with zeros off the mask) of that pass.
    """

    def __init__(
        self,
        dictionary: Dictionary,
        hook: str,
        *,
        with_error: bool = False,
        ablate: Sequence[int] = (),
        mode: str = "zero",
        means: torch.Tensor | None = None,
        max_norm: float | None = None,
    ):
        if mode not in ABLATION_MODES:
            raise ConfigError(f"ablation mode must be one of {ABLATION_MODES}, got {mode!r}")
        n = dictionary.config.n_latents
        bad = [j for j in ablate if not 0 <= j < n]
        if bad:
            raise ConfigError(f"features {bad} do not exist: the dictionary has features 0 … {n - 1}")
        if mode == "mean" and ablate and means is None:
            raise ConfigError(
                "mean ablation needs the features' means: pass `means` (FeatureStatistics.mean, "
                "or the `mean` of each feature in an inspection JSON)"
            )
        device = dictionary.decoder.weight.device
        self.dictionary, self.hook, self.with_error = dictionary, hook, with_error
        self.max_norm = max_norm if max_norm is not None else dictionary.metadata.get("max_input_norm")
        self.ablate = torch.tensor(list(ablate), dtype=torch.long, device=device)
        self.replacement = (
            means.to(device).float()[self.ablate]
            if means is not None and mode == "mean" and len(ablate)
            else torch.zeros(len(ablate), device=device)
        )
        self.mask: torch.Tensor | None = None
        self.ablated_activations: torch.Tensor | None = None

    def recorded(self) -> torch.Tensor:
        """The ablated features' activations [B, T, n] of the last forward pass."""
        assert self.ablated_activations is not None, "no forward pass has run yet"
        return self.ablated_activations

    def for_mask(self, mask: torch.Tensor) -> Splice:
        self.mask = mask
        return self

    def __call__(self, activation: torch.Tensor, hook: Any) -> torch.Tensor:
        check_model_width(self.dictionary, activation.shape[-1], self.hook)
        assert self.mask is not None, "call for_mask before the forward pass"
        mask = self.mask.to(activation.device)
        x = activation[mask].float()
        features = self.dictionary.encode(x)
        if self.with_error:
            change = self.replacement - features[:, self.ablate]
            spliced = x + change @ self.dictionary.feature_directions[self.ablate] if len(self.ablate) else x
        else:
            features_new = features.clone()
            features_new[:, self.ablate] = self.replacement
            spliced = self.dictionary.decode(features_new)
        if self.max_norm is not None:  # longer activations keep their clean value
            spliced = torch.where(x.norm(dim=-1, keepdim=True) > self.max_norm, x, spliced)
        record = activation.new_zeros(*mask.shape, len(self.ablate), dtype=torch.float32)
        record[mask] = features[:, self.ablate]
        self.ablated_activations = record
        out = activation.clone()
        out[mask] = spliced.to(activation.dtype)
        return out


def check_model_width(dictionary: Dictionary, width: int, hook: str) -> None:
    if width != dictionary.config.d:
        raise ConfigError(
            f"width mismatch: the dictionary takes d={dictionary.config.d} but the model's hook {hook!r} gives "
            f"d={width}. Splice at the hook the dictionary was trained on (--hook), with the model it was trained on"
        )


def capped_mask(activation: torch.Tensor, mask: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """`mask` [B, T] on the activation's device, less the positions whose activation [B, T, d] is
    longer than `max_norm` (None: all of `mask`)."""
    mask = mask.to(activation.device)
    if max_norm is None:
        return mask
    return mask & ~(activation.float().norm(dim=-1) > max_norm)


def zero_hook(mask: torch.Tensor, max_norm: float | None = None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """Zero-ablate the hook at the positions of `mask` whose activation is at most `max_norm` long
    (the other end of loss recovered)."""

    def fn(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return activation * ~capped_mask(activation, mask, max_norm)[..., None]

    return fn


def prediction_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, T−1]: which next-token predictions count (made at a document token, of a document token)."""
    return mask[:, :-1] & mask[:, 1:]


@torch.no_grad()
def run_logits(lm: LanguageModel, ids: torch.Tensor, fwd_hooks: list | None = None) -> torch.Tensor:
    """float32 logits [B, T, vocab] of the model on token ids [B, T], with the given hooks."""
    ids = ids.to(lm.device)
    return lm.bridge.run_with_hooks(ids, fwd_hooks=fwd_hooks or [], return_type="logits").float()


def token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B, T−1] next-token cross-entropy of the prediction made at each position."""
    log_probs = logits[:, :-1].log_softmax(-1)
    return -log_probs.gather(-1, ids[:, 1:, None].to(logits.device)).squeeze(-1)


@torch.no_grad()
def loss_recovered(
    lm: LanguageModel,
    dictionary: Dictionary,
    store: ActivationStore,
    *,
    hook: str | None = None,
    side: str = "validation",
    max_rows: int = 64,
    batch_rows: int = 8,
    allow_other_store: bool = False,
    allow_other_hook: bool = False,
    max_norm: float | None = None,
) -> dict[str, Any]:
    """Next-token loss clean, spliced and zero-ablated on rows of one side (held-out documents by
    default) of the store's split, at the hook and with the split the dictionary recorded.

    fraction_recovered = (L_zero − L_spliced) / (L_zero − L_clean): 1 is a perfect dictionary,
    0 no better than deleting the hook's output. Positions whose activation is longer than
    `max_norm` (default: the dictionary's recorded cap, if any) keep their clean activation in
    every run. Moves the dictionary to the model's device.
    """
    hook, split = resolve(
        dictionary, store, hook, allow_other_store=allow_other_store, allow_other_hook=allow_other_hook
    )
    ids, doc_mask, loss_mask = (torch.from_numpy(a) for a in store.rows(side, split, max_rows))
    result = loss_recovered_on_rows(
        lm, dictionary, hook, ids, doc_mask, loss_mask, batch_rows=batch_rows, max_norm=max_norm
    )
    if result is None:
        raise ConfigError(f"the {side!r} side of {store.root}'s split has no next-token predictions to score")
    return {
        **result,
        "split": side,
        "held_out_split": split.to_json(),
        "hook": hook,
    }


@torch.no_grad()
def loss_recovered_on_rows(
    lm: LanguageModel,
    dictionary: Dictionary,
    hook: str,
    ids: torch.Tensor,
    doc_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    batch_rows: int = 8,
    max_norm: float | None = None,
) -> dict[str, Any] | None:
    """`loss_recovered`'s measurement on given rows: token ids, document-token mask and which
    predicted tokens count (each [rows, ctx]). None when no prediction counts. Positions whose
    activation is longer than `max_norm` (default: the dictionary's recorded cap) are neither
    spliced nor ablated. Moves the dictionary to the model's device."""
    dictionary = dictionary.to(lm.device)
    ids = ids.long()
    totals = {"clean": 0.0, "spliced": 0.0, "zero_ablated": 0.0}
    splice = Splice(dictionary, hook, max_norm=max_norm)
    count = 0
    for lo in range(0, len(ids), batch_rows):
        batch, positions = ids[lo : lo + batch_rows], doc_mask[lo : lo + batch_rows].to(lm.device)
        counted = prediction_mask(positions) & loss_mask[lo : lo + batch_rows, 1:].to(lm.device)
        runs: dict[str, list[tuple[str, Any]]] = {
            "clean": [],
            "spliced": [(hook, splice.for_mask(positions))],
            "zero_ablated": [(hook, zero_hook(positions, splice.max_norm))],
        }
        for name, hooks in runs.items():
            totals[name] += float(token_losses(run_logits(lm, batch, hooks), batch)[counted].double().sum())
        count += int(counted.sum())
    if count == 0:
        return None
    losses = {f"{name}_loss": total / count for name, total in totals.items()}
    gap = losses["zero_ablated_loss"] - losses["clean_loss"]
    return {
        **losses,
        "fraction_recovered": (losses["zero_ablated_loss"] - losses["spliced_loss"]) / gap if gap else None,
        "predictions": count,
        "rows": len(ids),
        "max_norm": splice.max_norm,
    }
