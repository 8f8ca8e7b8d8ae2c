"""The weighted SAE (SPEC §3, paper B): L = (x − x̂)ᵀ Γ (x − x̂) + sparsity term.

Γ = diag(reconstruction_weights) is estimated once before training (see `dictionaries.weights`)
and saved with the model. With Γ = I the loss equals `sae_l1` (encoder "relu") or `sae_topk`
(encoder "topk") exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dictionaries.base import DictionaryConfig, LossTerms, SAELensExport, fold_linear_sae
from dictionaries.registry import register
from dictionaries.sae import ReLUEncoderSAE, decoder_l2, l1_penalty, topk_activations
from dictionaries.weights import ESTIMATORS, estimate_weights, load_weights_file, weight_spread
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class WSAEConfig(DictionaryConfig):
    architecture = "wsae"
    encoder: Literal["relu", "topk"] = "relu"
    l1_coefficient: float = 0.32
    """λ₁ (encoder "relu" only)."""
    decoder_l2_coefficient: float = 0.2
    """λ₂ on decoder weight and bias (encoder "relu" only, as in `sae_l1`); 0 switches it off."""
    k: int = 30
    """Active latents (encoder "topk" only)."""
    estimator: str = "uniform"
    """A name from `dictionaries.weights.ESTIMATORS` (e.g. "kurtosis", or its outlier-proof
    "kurtosis_rank"), or "file" to read `weights_file`."""
    alpha: float = 1.0
    """γ_i = s_i^α (paper B shows α ∈ {0.5, 1})."""
    weights_file: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ("relu", "topk"):
            raise ConfigError(f"encoder must be 'relu' or 'topk', got {self.encoder!r}")
        if self.encoder == "topk" and not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")
        if self.estimator == "file" and not self.weights_file:
            raise ConfigError("estimator 'file' needs weights_file (a .safetensors or .json path)")
        if self.estimator != "file" and self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {self.estimator!r}; known: {sorted(ESTIMATORS)} or 'file'")


@register
class WSAE(ReLUEncoderSAE):
    config_class = WSAEConfig
    config: WSAEConfig
    reconstruction_weights: torch.Tensor  # a buffer: Γ's diagonal

    def __init__(self, config: WSAEConfig) -> None:
        super().__init__(config)
        self.register_buffer("reconstruction_weights", torch.ones(config.d))

    def prepare(self, sample: torch.Tensor) -> None:
        """Estimate Γ from the training sample (or read it from the configured file)."""
        cfg = self.config
        if cfg.estimator == "file" and cfg.weights_file is not None:  # the config checks it is set
            weights = load_weights_file(cfg.weights_file, cfg.d)
        else:
            weights = estimate_weights(sample, cfg.estimator, cfg.alpha)
        self.reconstruction_weights.copy_(weights)

    def report_extras(self) -> dict[str, float]:
        """Γ's spread (`weight_spread`): min, max and effective number of dimensions, in every
        evaluation report, so metrics.json and the model card show how concentrated Γ is."""
        spread = weight_spread(self.reconstruction_weights)
        return {f"weight_{name}": value for name, value in spread.items() if name != "d"}

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        pre = self.encoder(xn)
        return topk_activations(pre, self.config.k) if self.config.encoder == "topk" else torch.relu(pre)

    def _reconstruction_error(self, xn: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        return ((xn.float() - x_hat.float()).pow(2) * self.reconstruction_weights).sum(-1).mean()

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        if self.config.encoder == "topk":
            return {"recon": self._reconstruction_error(xn, self._topk_reconstruction(xn, self.config.k))}
        f = self._encode(xn)
        return {
            "recon": self._reconstruction_error(xn, self.decoder(f)),
            "sparsity": self.config.l1_coefficient * l1_penalty(f),
            "decoder_l2": self.config.decoder_l2_coefficient * decoder_l2(self.decoder),
        }

    def saelens_export(self) -> SAELensExport:
        """Γ only weights the training loss, so the encoder and decoder are a plain ReLU or TopK SAE."""
        if self.config.encoder == "relu":
            return super().saelens_export()
        tensors = fold_linear_sae(self.encoder, self.decoder, self.input_scale)
        return SAELensExport("topk", False, tensors, {"k": self.config.k, "rescale_acts_by_decoder_norm": False})
