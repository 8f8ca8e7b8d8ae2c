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
(AuxK on the full reconstruction's residual). Inference and SAELens export ("jumprelu") are
BatchTopK's: the prefixes only shape training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dictionaries.base import LossTerms, squared_error
from dictionaries.batchtopk import BatchTopK, BatchTopKConfig
from dictionaries.registry import register
from dictionaries.sparse_topk import RowLayout, decode_by_latent_range
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

    def prefix_reconstructions(
        self, values: torch.Tensor, indices: torch.Tensor, layout: RowLayout
    ) -> list[torch.Tensor]:
        """x̂_m for every prefix m (normalised units) from a ragged batch top-k code (values, indices
        [N] and their `layout`), each decoded from the code's latents below m plus b_dec; the last is
        the full decode. The entries are decoded by prefix group in one sparse decode (the cost of
        the full one), and the groups' decodes summed up."""
        groups = decode_by_latent_range(values, indices, layout, self.decoder.weight, self.config.prefixes)
        partial: torch.Tensor = self.decoder.bias
        reconstructions = []
        # Plain sums (a cumsum over this small dimension was 10% of the step) of unbind's views: the
        # backward of unbind stacks the G gradients once, where G selects `groups[:, g]` would each
        # zero-fill a [B, G, d] gradient (another 20% of the step).
        for group in groups.unbind(1):
            partial = partial + group
            reconstructions.append(partial)
        return reconstructions

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        code, dead = self._training_code(xn)
        assert code.layout is not None  # a batch top-k code is ragged
        reconstructions = self.prefix_reconstructions(code.values, code.indices, code.layout)
        terms: LossTerms = {
            f"recon_prefix_{m}": squared_error(xn, x_hat).mean()
            for m, x_hat in zip(self.config.prefixes[:-1], reconstructions[:-1])
        }
        terms["recon"] = squared_error(xn, reconstructions[-1]).mean()
        terms["aux"] = self._sparse_aux_loss(xn, reconstructions[-1], code, dead)
        return terms
