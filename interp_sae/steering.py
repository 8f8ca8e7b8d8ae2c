"""Steer a model with dictionary features, and generate with and without the steering.

Two modes, at the document positions of the sequence (not BOS: dictionaries never train on it):

- ``add``: the hook's output x becomes x + Σ_J value_J · d_J, with d_J the feature's decoder
  direction in raw activation units (`Dictionary.feature_directions`);
- ``clamp``: feature J's activation is set to value_J and the reconstruction error is kept,
  x + Σ_J (value_J − f_J(x)) · d_J, so only the clamped features' contributions change.

`steer` generates the plain and the steered continuation of a prompt from the same seed (a fresh
CPU `torch.Generator` per run), so an intervention of strength 0 in ``add`` mode reproduces the
plain generation token for token, greedy or sampled. Generation recomputes the whole sequence at
each step (short continuations of small models; no key-value cache to keep consistent with the
hook) and stops at EOS, which is not included in the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from activation_cache import LanguageModel
from dictionaries import Dictionary
from interp_sae.ablation import text_sequence
from interp_sae.errors import ConfigError
from interp_sae.model_hooks import resolve_model_hook
from interp_sae.splice import check_model_width, run_logits

STEERING_MODES = ("add", "clamp")


@dataclass(frozen=True)
class Intervention:
    """Feature `feature` steered by `value`: the amount added (add) or the activation set (clamp)."""

    feature: int
    value: float


class SteeringHook:
    """A TransformerLens hook function that steers `dictionary`'s features at the positions of a mask.

    The mask is a bool tensor [B, T] or [T] of the positions to steer, or None for every
    position; `for_mask` changes it between forward passes (the sequence grows as it generates).
    """

    def __init__(
        self,
        dictionary: Dictionary,
        interventions: Sequence[Intervention | tuple[int, float]],
        mode: str = "add",
        mask: torch.Tensor | None = None,
    ):
        self.interventions = check_interventions(dictionary, interventions, mode)
        device = dictionary.decoder.weight.device
        self.dictionary, self.mode, self.mask = dictionary, mode, mask
        self.features = torch.tensor([i.feature for i in self.interventions], dtype=torch.long, device=device)
        self.values = torch.tensor([i.value for i in self.interventions], dtype=torch.float32, device=device)

    def for_mask(self, mask: torch.Tensor | None) -> SteeringHook:
        self.mask = mask
        return self

    def __call__(self, activation: torch.Tensor, hook: Any = None) -> torch.Tensor:
        check_model_width(self.dictionary, activation.shape[-1], getattr(hook, "name", None) or "the hook")
        mask = torch.ones(activation.shape[:-1], dtype=torch.bool) if self.mask is None else self.mask
        mask = mask.to(activation.device).expand(activation.shape[:-1])
        x = activation[mask].float()
        directions = self.dictionary.feature_directions[self.features]
        if self.mode == "add":
            steered = x + self.values @ directions
        else:
            change = self.values - self.dictionary.encode(x)[:, self.features]
            steered = x + change @ directions
        out = activation.clone()
        out[mask] = steered.to(activation.dtype)
        return out


def steering_hook(
    dictionary: Dictionary,
    interventions: Sequence[Intervention | tuple[int, float]],
    mode: str = "add",
    mask: torch.Tensor | None = None,
) -> SteeringHook:
    """A hook function for `lm.bridge.run_with_hooks(ids, fwd_hooks=[(hook, fn)])`, steering the
    positions of `mask` (None: every position, BOS included)."""
    return SteeringHook(dictionary, interventions, mode, mask)


def check_interventions(
    dictionary: Dictionary, interventions: Sequence[Intervention | tuple[int, float]], mode: str
) -> list[Intervention]:
    """The interventions as `Intervention`s; refuses an unknown mode, no intervention, a feature
    the dictionary lacks, and the same feature clamped twice."""
    if mode not in STEERING_MODES:
        raise ConfigError(f"steering mode must be one of {STEERING_MODES}, got {mode!r}")
    steered = [i if isinstance(i, Intervention) else Intervention(int(i[0]), float(i[1])) for i in interventions]
    if not steered:
        raise ConfigError("nothing to steer: give at least one (feature, value) intervention")
    n = dictionary.config.n_latents
    unknown = [i.feature for i in steered if not 0 <= i.feature < n]
    if unknown:
        raise ConfigError(f"features {unknown} do not exist: the dictionary has features 0 … {n - 1}")
    features = [i.feature for i in steered]
    if mode == "clamp" and len(set(features)) < len(features):
        raise ConfigError(f"features {features}: a feature can be clamped to one value only")
    return steered


@torch.no_grad()
def steer(
    lm: LanguageModel,
    dictionary: Dictionary,
    prompt: str,
    interventions: Sequence[Intervention | tuple[int, float]],
    *,
    mode: str = "add",
    max_new_tokens: int = 30,
    sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    hook: str | None = None,
    allow_other_hook: bool = False,
) -> dict[str, Any]:
    """Generate up to `max_new_tokens` after `prompt` plainly and with the interventions at `hook`
    (default: the dictionary's recorded hook); greedy unless `sample` (then softmax(logits /
    temperature), over the `top_k` most likely tokens if given). Returns the JSON-ready result;
    moves the dictionary to the model's device."""
    steered = check_interventions(dictionary, interventions, mode)
    decoding = Decoding(max_new_tokens, sample, temperature, top_k, seed)
    hook = resolve_model_hook(lm, dictionary, hook, allow_other_hook=allow_other_hook)
    ids, _ = text_sequence(lm, prompt)
    if len(ids) + max_new_tokens > lm.n_ctx:
        raise ConfigError(
            f"the prompt ({len(ids)} tokens with BOS) and {max_new_tokens} new tokens exceed the model's context of "
            f"{lm.n_ctx}: shorten the prompt or lower max_new_tokens"
        )
    fn = steering_hook(dictionary.to(lm.device), steered, mode)
    return {
        "prompt": prompt,
        "hook": hook,
        "mode": mode,
        "interventions": [{"feature": i.feature, "value": i.value} for i in steered],
        "sample": sample,
        "temperature": temperature,
        "seed": seed,
        "plain": _continuation(lm, _generate(lm, ids, [], decoding)),
        "steered": _continuation(lm, _generate(lm, ids, [(hook, fn)], decoding)),
    }


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen: greedy (argmax) unless `sample`; then from softmax(logits /
    temperature), over the `top_k` most likely tokens if given, drawn with a generator seeded by `seed`."""

    max_new_tokens: int
    sample: bool
    temperature: float
    top_k: int | None
    seed: int

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be ≥ 1, got {self.top_k}")

    def next_token(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        if not self.sample:
            return int(logits.argmax())
        if self.top_k is None:
            return int(torch.multinomial((logits / self.temperature).softmax(-1), 1, generator=generator))
        kept = logits.topk(min(self.top_k, len(logits)))
        probs = (kept.values / self.temperature).softmax(-1)
        return int(kept.indices[torch.multinomial(probs, 1, generator=generator)])


def _generate(
    lm: LanguageModel, prompt_ids: list[int], steering: list[tuple[str, SteeringHook]], decoding: Decoding
) -> list[int]:
    """The ids generated after `prompt_ids` (BOS first) with the `steering` hooks, EOS excluded."""
    generator = torch.Generator().manual_seed(decoding.seed)  # on the CPU: the same draws on every device
    eos = lm.tokenizer.eos_token_id
    ids, new = list(prompt_ids), []
    for _ in range(decoding.max_new_tokens):
        steered_positions = torch.arange(len(ids)) > 0  # every position but BOS
        hooks = [(hook, fn.for_mask(steered_positions)) for hook, fn in steering]
        token = decoding.next_token(run_logits(lm, torch.tensor([ids]), hooks)[0, -1].cpu(), generator)
        if token == eos:
            break
        ids.append(token)
        new.append(token)
    return new


def _continuation(lm: LanguageModel, ids: list[int]) -> dict[str, Any]:
    decode = lm.tokenizer.decode
    return {"text": decode(ids), "tokens": [decode([t]) for t in ids], "ids": ids}
