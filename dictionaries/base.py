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
            raise ValueError(
                f"{cls.architecture} config has unknown fields {unknown}; expected a subset of {sorted(fields)}"
            )
        return cls(**values)

    def __post_init__(self) -> None:
        if self.d < 1 or self.n_latents < 1:
            raise ValueError(f"d and n_latents must be positive, got d={self.d}, n_latents={self.n_latents}")


class Dictionary(nn.Module):
    """Base class: subclasses implement `_encode` and `_loss` on normalised inputs.

    `variational` dictionaries (VAE, VAEase) also implement `latent_log_variance`; the metrics
    use it to split active from inactive latents.
    """

    config_class: ClassVar[type[DictionaryConfig]]
    variational: ClassVar[bool] = False

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

    def latent_log_variance(self, x: torch.Tensor) -> torch.Tensor:
        """log σ² of the posterior [B, κ] (variational dictionaries only)."""
        raise TypeError(f"{self.architecture} is not variational: it has no latent variance")

    # --- training hooks ----------------------------------------------------------------------
    def prepare(self, sample: torch.Tensor) -> None:
        """Data-dependent set-up before the first step, from a raw sample [N, d] of the training data."""

    def after_optimizer_step(self) -> None:
        """Re-impose constraints on the parameters (e.g. unit-norm decoder columns)."""


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Per-vector sum of squared errors ‖x − x̂‖² [B], in float32 even under autocast."""
    return (x.float() - x_hat.float()).pow(2).sum(-1)
