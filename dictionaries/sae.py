"""The paper-A baselines as the VAEase authors ran them (SPEC §2).

All: encoder Linear(d, κ) → ReLU, linear decoder with bias; losses are per-vector sums,
batch-averaged. The decoder penalty λ₂ Σ_{θ ∈ decoder} ‖θ‖² covers the weight *and* bias and is
added once per batch (it does not depend on the inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dictionaries.base import (
    Dictionary,
    DictionaryConfig,
    LossTerms,
    SAELensExport,
    fold_linear_sae,
    squared_error,
)
from dictionaries.registry import register
from dictionaries.sparse_topk import sparse_decode, topk_encode
from interp_sae.errors import ConfigError


def topk_activations(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest of ReLU(pre) per row, zero the rest."""
    values, indices = torch.relu(pre).topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values)


def l1_penalty(f: torch.Tensor) -> torch.Tensor:
    """Batch mean of Σ_j |f_j| for non-negative codes f [B, κ] (ReLU's), so Σ_j f_j: summed in
    float32 without a float32 copy of f, nor |f| and its backward, each a pass over [B, κ] (under
    bf16 autocast the copy alone wrote twice f's bytes)."""
    return f.sum(-1, dtype=torch.float32).mean()


def log_penalty(f: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.log(f.float().abs() + eps).sum(-1).mean()


def decoder_l2(decoder: nn.Linear) -> torch.Tensor:
    return decoder.weight.float().pow(2).sum() + decoder.bias.float().pow(2).sum()


class ReLUEncoderSAE(Dictionary):
    """Shared body: encoder Linear(d, κ) → ReLU and the (overridable) reconstruction error."""

    def __init__(self, config: DictionaryConfig) -> None:
        super().__init__(config)
        self.encoder = nn.Linear(config.d, config.n_latents)

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder(xn))

    def _reconstruction_error(self, xn: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Batch mean of the per-vector reconstruction error (the weighted SAE overrides it)."""
        return squared_error(xn, x_hat).mean()

    def _topk_reconstruction(self, xn: torch.Tensor, k: int) -> torch.Tensor:
        """decode(topk(encode(xn))) for training, through the sparse path: the decoder and both
        backward passes touch only the k active latents of each vector (dictionaries.sparse_topk).
        Equal to the dense computation to float rounding, and several times faster for k ≪ κ."""
        values, indices = topk_encode(xn, self.encoder.weight, self.encoder.bias, k)
        return sparse_decode(values, indices, self.decoder.weight, self.decoder.bias)

    def saelens_export(self) -> SAELensExport:
        """SAELens "standard": the same linear encoder, ReLU and linear decoder."""
        return SAELensExport("standard", False, fold_linear_sae(self.encoder, self.decoder, self.input_scale))


@dataclass(kw_only=True)
class SAEL1Config(DictionaryConfig):
    architecture = "sae_l1"
    l1_coefficient: float = 0.32
    """λ₁; the authors' LLM value."""
    decoder_l2_coefficient: float = 0.2
    """λ₂, on the decoder weight and bias; the authors' LLM value."""


@register
class SAEL1(ReLUEncoderSAE):
    """‖x − x̂‖² + λ₁ Σ_j |z_j| + λ₂ (‖W_dec‖² + ‖b_dec‖²)."""

    config_class = SAEL1Config
    config: SAEL1Config

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        f = self._encode(xn)
        return {
            "recon": self._reconstruction_error(xn, self.decoder(f)),
            "sparsity": self.config.l1_coefficient * l1_penalty(f),
            "decoder_l2": self.config.decoder_l2_coefficient * decoder_l2(self.decoder),
        }


@dataclass(kw_only=True)
class SAELogConfig(DictionaryConfig):
    architecture = "sae_log"
    log_coefficient: float = 0.01
    log_eps: float = 1e-4
    decoder_l2_coefficient: float = 0.2


@register
class SAELog(ReLUEncoderSAE):
    """‖x − x̂‖² + λ₁ Σ_j log(|z_j| + ε) + λ₂ (‖W_dec‖² + ‖b_dec‖²)."""

    config_class = SAELogConfig
    config: SAELogConfig

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        f = self._encode(xn)
        return {
            "recon": self._reconstruction_error(xn, self.decoder(f)),
            "sparsity": self.config.log_coefficient * log_penalty(f, self.config.log_eps),
            "decoder_l2": self.config.decoder_l2_coefficient * decoder_l2(self.decoder),
        }


@dataclass(kw_only=True)
class SAETopKConfig(DictionaryConfig):
    architecture = "sae_topk"
    k: int = 30

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")


@register
class SAETopK(ReLUEncoderSAE):
    """Keep the k largest of ReLU(Wx + b); plain squared error."""

    config_class = SAETopKConfig
    config: SAETopKConfig

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        return topk_activations(self.encoder(xn), self.config.k)

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        return {"recon": self._reconstruction_error(xn, self._topk_reconstruction(xn, self.config.k))}

    def saelens_export(self) -> SAELensExport:
        """SAELens "topk": our k largest of ReLU(pre) is its ReLU of the k largest pre."""
        tensors = fold_linear_sae(self.encoder, self.decoder, self.input_scale)
        return SAELensExport("topk", False, tensors, {"k": self.config.k, "rescale_acts_by_decoder_norm": False})
