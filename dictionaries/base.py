"""The interface every dictionary implements, and its config base class.

A dictionary maps an activation vector x ∈ R^d to κ feature activations and back through a
linear decoder x̂ = W_dec f + b_dec. Every public method takes and returns *raw* activations:
an optional scalar input scale (set by the trainer's input normalisation) is applied inside,
and stored with the weights, so a saved dictionary reproduces the trained one exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from interp_sae.errors import ConfigError

LossTerms = dict[str, torch.Tensor]
"""Named scalar loss terms of one batch; the training loss is their sum."""


@dataclass(kw_only=True)
class DictionaryConfig:
    """Fields shared by all architectures. Subclasses set `architecture` and add fields."""

    architecture: ClassVar[str]
    d: int
    """Input dimension (the hook's activation width)."""
    n_latents: int
    """κ, the number of latents (features)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DictionaryConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - fields)
        if unknown:
            raise ConfigError(
                f"{cls.architecture} config has unknown fields {unknown}; expected a subset of {sorted(fields)}"
            )
        return cls(**values)

    def __post_init__(self) -> None:
        if self.d < 1 or self.n_latents < 1:
            raise ConfigError(f"d and n_latents must be positive, got d={self.d}, n_latents={self.n_latents}")


class CannotExport(ConfigError):
    """The dictionary has no equivalent in the target format; the message says why."""


@dataclass(frozen=True)
class SAELensExport:
    """How a dictionary is written in SAELens 6's layout (see interp_sae/saelens.py): its
    `architecture`, config fields beyond the common ones, and exactly the tensors SAELens's
    strict loader expects (W_enc [d, κ], b_enc, W_dec [κ, d], b_dec, and e.g. threshold), with the
    input scale folded in so SAELens reads raw activations."""

    architecture: str
    apply_b_dec_to_input: bool
    tensors: dict[str, torch.Tensor]
    cfg: dict[str, Any] = dataclasses.field(default_factory=dict)


class Dictionary(nn.Module):
    """Base class: subclasses implement `_encode` and `_loss` on normalised inputs.

    What differs between families is a method or class attribute here, never a name switch
    elsewhere: which latents are active (`active_mask`, `ad_method`), how inspection ranks them
    (`rank_modes`, `inspection_batch`, `rank_scores`), extra evaluation numbers
    (`sampled_reconstruction`, `report_extras`) and how it leaves the project (`saelens_export`).
    """

    config_class: ClassVar[type[DictionaryConfig]]
    ad_method: ClassVar[str] = "l0"
    """How `active_mask` decides activity; named in every report. SAEs: non-zero codes (AD = L0)."""
    rank_modes: ClassVar[tuple[str, ...]] = ("value", "abs")
    """How inspection may rank a feature's top tokens (see interp_sae/inspect_stats.py)."""
    input_scale: torch.Tensor  # a buffer: x_normalised = x * input_scale
    decoder: nn.Linear

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__()
        self.config = config
        self.metadata: dict[str, Any] = {}  # provenance saved in config.json (see io.py)
        self.decoder = nn.Linear(config.n_latents, config.d)
        # x_normalised = x * input_scale. 1 unless the trainer normalised inputs.
        self.register_buffer("input_scale", torch.ones(()))

    @property
    def architecture(self) -> str:
        return self.config.architecture

    # --- implemented by subclasses, in normalised units -------------------------------------
    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        raise NotImplementedError

    # --- public interface, raw units ---------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic feature activations [B, κ]."""
        return self._encode(x * self.input_scale)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Reconstruction [B, d] from feature activations [B, κ]."""
        return self.decoder(features) / self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction decode(encode(x))."""
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor, generator: torch.Generator | None = None) -> LossTerms:
        """The training loss terms of a batch, computed on normalised inputs.

        `generator` drives any sampling (VAE noise) so that training is reproducible.
        """
        return self._loss(x * self.input_scale, generator)

    @property
    def feature_directions(self) -> torch.Tensor:
        """[κ, d]: row j is what one unit of feature j adds to the raw reconstruction."""
        return self.decoder.weight.T / self.input_scale

    # --- what metrics and inspection ask of every dictionary ---------------------------------
    def active_mask(self, x: torch.Tensor) -> torch.Tensor:
        """[B, κ] bool: which latents are active for each raw vector (AD counts them)."""
        return self.encode(x) != 0

    def activity_score(self, x: torch.Tensor) -> torch.Tensor:
        """[B, κ], larger = more active: the order the AD–RE curve keeps latents in."""
        return self.encode(x).abs()

    def sampled_reconstruction(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor | None:
        """A reconstruction from a random draw (variational dictionaries), or None."""
        return None

    def report_extras(self) -> dict[str, float]:
        """Numbers an evaluation report adds for this dictionary (e.g. the VAE's γ)."""
        return {}

    def inspection_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(features [B, κ] float32, fires bool [B, κ], auxiliary [B, κ] or None) for raw x; the
        auxiliary tensor is what `rank_scores` needs beyond the values (None for SAEs)."""
        features = self.encode(x).float()
        return features, features != 0, None

    def rank_scores(self, mode: str, values: torch.Tensor, auxiliary: torch.Tensor | None) -> torch.Tensor:
        """Rank scores of firing activations `values` under `mode` (one of `rank_modes`)."""
        if mode == "value":
            return values
        if mode == "abs":
            return values.abs()
        raise ConfigError(f"{self.architecture} cannot rank by {mode!r}; use one of {self.rank_modes}")

    def saelens_export(self) -> SAELensExport:
        """This dictionary in SAELens's terms, or CannotExport saying why there is none."""
        raise CannotExport("its forward pass has no SAELens equivalent")

    # --- training hooks ----------------------------------------------------------------------
    def prepare(self, sample: torch.Tensor) -> None:
        """Data-dependent set-up before the first step, from a raw sample [N, d] of the training data."""

    def after_optimizer_step(self) -> None:
        """Re-impose constraints on the parameters (e.g. unit-norm decoder columns)."""

    def plan_training(self, run_tokens: int) -> None:
        """Settings that follow the run's length, fixed before the first step: the trainer calls this
        with the training tokens the run will show this dictionary (per rank), before it records the
        configs. Nothing by default."""


def fold_linear_sae(encoder: nn.Linear, decoder: nn.Linear, input_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """SAELens's four tensors for a linear encoder and decoder, input scale s folded in.

    Ours: f = act(W_e (s·x − b_d·a) + b_e), x̂ = (W_d f + b_d) / s, a = apply_b_dec_to_input.
    So W_enc = s·W_eᵀ, b_enc = b_e, W_dec = W_dᵀ / s, b_dec = b_d / s (and s·x − b_d = s·(x − b_dec))."""
    s = input_scale
    tensors = {
        "W_enc": (encoder.weight * s).T,
        "b_enc": encoder.bias,
        "W_dec": (decoder.weight / s).T,
        "b_dec": decoder.bias / s,
    }
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-vector sum of squared errors ‖x − x̂‖² [B], in float32 even under autocast."""
    return (x.float() - x_hat.float()).pow(2).sum(-1)
