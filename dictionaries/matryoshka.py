"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen and Nanda 2025, "Learning Multi-Level
Features with Matryoshka Sparse Autoencoders").

A BatchTopK SAE (see `dictionaries.batchtopk`, whose code, threshold and inference it shares)
whose nested prefixes — the first m₁ < m₂ < … < κ latents — must each reconstruct the input on
their own, so that early latents learn general features and later ones refine them. The batch
top-k is chosen once over the whole dictionary; prefix m decodes with only its first m latents:

    x̂_m = Σ_{j < m} f_j d_j + b_dec,      loss = Σ_m ‖x − x̂_m‖²  (batch means)  + aux

The prefix losses are **summed** with equal weights, as in the paper's objective (not averaged:
with one prefix this is exactly BatchTopK's loss). Loss terms: `recon_prefix_{m}` for each inner
prefix, `recon` for the full width (comparable with other dictionaries' `recon`), and `aux`
(AuxK on the full reconstruction's residual), computed in one pass by
`dictionaries.prefix_losses`. Inference and SAELens export ("jumprelu") are BatchTopK's: the
prefixes only shape training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dictionaries.base import LossTerms
from dictionaries.batchtopk import BatchTopK, BatchTopKConfig
from dictionaries.prefix_losses import prefix_squared_errors
from dictionaries.registry import register
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class MatryoshkaConfig(BatchTopKConfig):
    architecture = "matryoshka"
    prefixes: list[int] = field(default_factory=list)
    """Strictly increasing prefix widths, each in [1, n_latents]; n_latents is appended when missing.
    Empty (the default): [n_latents // 16, n_latents // 4, n_latents], leaving out widths below 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prefixes:
            self.prefixes = sorted(
                {m for m in (self.n_latents // 16, self.n_latents // 4) if m >= 1} | {self.n_latents}
            )
        if not isinstance(self.prefixes, list | tuple) or not all(
            isinstance(m, int) and not isinstance(m, bool) for m in self.prefixes
        ):
            raise ConfigError(f"{self.architecture}: prefixes must be a list of integers, got {self.prefixes!r}")
        prefixes = list(self.prefixes)
        if any(b <= a for a, b in zip(prefixes, prefixes[1:])):
            raise ConfigError(f"{self.architecture}: prefixes must be strictly increasing, got {prefixes}")
        if prefixes[0] < 1 or prefixes[-1] > self.n_latents:
            raise ConfigError(
                f"{self.architecture}: prefixes must lie in [1, n_latents={self.n_latents}], got {prefixes}"
            )
        if prefixes[-1] != self.n_latents:
            prefixes.append(self.n_latents)  # the full width is always trained
        self.prefixes = prefixes


@register
class Matryoshka(BatchTopK):
    config_class = MatryoshkaConfig
    config: MatryoshkaConfig

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        code, dead = self._training_code(xn)
        assert code.layout is not None  # a batch top-k code is ragged
        losses, residual = prefix_squared_errors(
            code.values, code.indices, code.layout, self.decoder.weight, self.decoder.bias, xn, self.config.prefixes
        )
        *inner, full = losses.unbind()
        terms: LossTerms = {f"recon_prefix_{m}": loss for m, loss in zip(self.config.prefixes, inner)}
        terms["recon"] = full
        terms["aux"] = self._sparse_aux_loss(xn, residual, code, dead)
        return terms
