"""VAEase and the plain VAE (SPEC §1): a Gaussian VAE with a linear decoder and learned decoder
variance γ; VAEase feeds the decoder the gated sample (1 − σ) ⊙ z so latents whose posterior
stays at the prior (σ → 1) are silenced per input.

Loss per vector, batch-averaged (2 × negative ELBO, prior N(0, I), p(x|z) = N(x̂, γI)):
    ‖x − x̂‖²/γ + d·log γ + d·log 2π + Σ_j (σ_j² + μ_j² − log σ_j²) − κ
reported as the terms `recon` (‖x − x̂‖²/γ), `log_gamma` (d·log γ + d·log 2π) and `kl`.

Precision: under the trainer's bf16 autocast only the encoder runs in bf16. The code (sample or
mean) is float32, and the decoder and every loss term run with autocast disabled, in float32:
γ is small (e^−10 at the LLM default), so a bf16-rounded x̂ would put its rounding error, divided
by γ, into `recon`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dictionaries.base import CannotExport, Dictionary, DictionaryConfig, LossTerms, SAELensExport, squared_error
from dictionaries.metrics import two_means_low_mask
from dictionaries.registry import register
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class VAEaseConfig(DictionaryConfig):
    """Defaults are the authors' LLM-activation settings (code)."""

    architecture = "vaease"
    encoder: Literal["swish_split", "mlp"] = "swish_split"
    """`swish_split` (LLM code): h = swish(W₁x + b₁) ∈ R^{2κ}; μ = h[:κ];
    σ² = max(sigmoid(W₂ h[κ:] + b₂), min_variance).
    `mlp` (synthetic code): `encoder_layers` Linear layers of width 2κ with swish between them;
    the last layer's 2κ outputs are split into μ and log σ², the latter clamped to ≤ 0 so σ ≤ 1.
    The split is the authors' (code): `torch.chunk(out, 2, dim=-1)`, the first κ outputs are μ and
    the last κ are log σ², which is what this does."""
    encoder_layers: int = 4
    """Number of Linear layers of the `mlp` encoder (ignored by `swish_split`)."""
    init_log_gamma: float = -10.0
    """Initial log γ. The authors swept 0 … −10 on LLM activations and used −10; −0.5 on synthetic."""
    min_variance: float = 1e-7

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ("swish_split", "mlp"):
            raise ConfigError(f"encoder must be 'swish_split' or 'mlp', got {self.encoder!r}")
        if self.encoder == "mlp" and self.encoder_layers < 1:
            raise ConfigError(f"encoder_layers must be ≥ 1, got {self.encoder_layers}")


@dataclass(kw_only=True)
class VAEConfig(VAEaseConfig):
    architecture = "vae"


@register
class VAEase(Dictionary):
    config_class = VAEaseConfig
    config: VAEaseConfig
    encoder: nn.Module
    """`swish_split`: Linear(d, 2κ); `mlp`: a Sequential of Linear layers with swish between them."""
    variance_head: nn.Linear
    """`swish_split` only: W₂, b₂ of σ² = sigmoid(W₂ h[κ:] + b₂)."""
    gated = True
    ad_method = "two_means_log_variance"
    """Active = the low group of a 1-D 2-means split of the vector's κ values of log σ² (SPEC §4)."""
    rank_modes = ("value", "abs", "one_minus_sigma")

    def __init__(self, config: VAEaseConfig) -> None:
        super().__init__(config)
        k, d = config.n_latents, config.d
        if config.encoder == "swish_split":
            self.encoder = nn.Linear(d, 2 * k)
            self.variance_head = nn.Linear(k, k)
        else:
            widths = [d] + [2 * k] * config.encoder_layers
            layers = nn.Sequential()
            for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
                if i:
                    layers.append(nn.SiLU())
                layers.append(nn.Linear(w_in, w_out))
            self.encoder = layers
        self.log_gamma = nn.Parameter(torch.tensor(float(config.init_log_gamma)))

    def _posterior(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²), each [B, κ], float32."""
        k = self.config.n_latents
        if self.config.encoder == "swish_split":
            h = F.silu(self.encoder(xn))
            mu, h2 = h[:, :k], h[:, k:]
            var = torch.sigmoid(self.variance_head(h2).float()).clamp(min=self.config.min_variance)
            return mu.float(), var.log()
        mu, log_var = self.encoder(xn).float().chunk(2, dim=-1)  # the authors' split (code)
        return mu, log_var.clamp(max=0.0)

    def _code(self, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """What the decoder sees for latent value `mu` (a sample or the mean)."""
        return (1 - std) * mu if self.gated else mu

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        """The gated mean (1 − σ) ⊙ μ for VAEase, μ for the VAE. Signed."""
        mu, log_var = self._posterior(xn)
        return self._code(mu, torch.exp(0.5 * log_var))

    def latent_log_variance(self, x: torch.Tensor) -> torch.Tensor:
        return self._posterior(x * self.input_scale)[1]

    def _sample(
        self, xn: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(code of one posterior sample z = μ + σ ⊙ ε, μ, log σ²), all float32 [B, κ]; the code is
        (1 − σ) ⊙ z for VAEase, z for the VAE."""
        mu, log_var = self._posterior(xn)
        std = torch.exp(0.5 * log_var)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self._code(mu + std * eps, std), mu, log_var

    def _decode_fp32(self, code: torch.Tensor) -> torch.Tensor:
        """The linear decoder in float32 even inside autocast (normalised units)."""
        with torch.autocast(device_type=code.device.type, enabled=False):
            return self.decoder(code.float())

    def sampled_code(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, κ] float32: what the decoder sees for one posterior sample of raw x (gated for
        VAEase); `decode` of it is `sampled_reconstruction` for the same draw."""
        return self._sample(x * self.input_scale, generator)[0]

    def sampled_reconstruction(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruction from one posterior sample (what the authors' RE reports), float32."""
        code = self._sample(x * self.input_scale, generator)[0]
        return self._decode_fp32(code) / self.input_scale

    def active_mask(self, x: torch.Tensor) -> torch.Tensor:
        return two_means_low_mask(self.latent_log_variance(x))

    def activity_score(self, x: torch.Tensor) -> torch.Tensor:
        return -self.latent_log_variance(x)

    def report_extras(self) -> dict[str, float]:
        return {"gamma": self.gamma}

    def inspection_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Features are the signed gated mean; a latent fires when it is active (see `active_mask`);
        the auxiliary tensor is log σ², for ranking by 1 − σ."""
        log_var = self.latent_log_variance(x)
        return self.encode(x).float(), two_means_low_mask(log_var), log_var

    def rank_scores(self, mode: str, values: torch.Tensor, auxiliary: torch.Tensor | None) -> torch.Tensor:
        if mode == "one_minus_sigma" and auxiliary is not None:
            return 1 - torch.exp(0.5 * auxiliary.float())  # how far the posterior left the prior
        return super().rank_scores(mode, values, auxiliary)

    def saelens_export(self) -> SAELensExport:
        raise CannotExport(
            "VAEase's code is the gated mean (1 − σ) ⊙ μ, and the gate σ comes from the encoder's variance head, "
            "which SAELens has no slot for"
            if self.gated
            else "the VAE's code is the posterior mean μ of a swish (SiLU) or multi-layer encoder, and SAELens's "
            "SAEs encode with one linear layer and ReLU, TopK or JumpReLU"
        )

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        code, mu, log_var = self._sample(xn, generator)  # the encoder may run under autocast
        d, k = self.config.d, self.config.n_latents
        with torch.autocast(device_type=xn.device.type, enabled=False):  # decoder and loss: float32
            x_hat = self._decode_fp32(code)
            log_gamma = self.log_gamma.float()
            return {
                "recon": squared_error(xn, x_hat).mean() / log_gamma.exp(),
                "log_gamma": d * log_gamma + d * math.log(2 * math.pi),
                "kl": (log_var.exp() + mu.pow(2) - log_var).sum(-1).mean() - k,
            }

    @property
    def gamma(self) -> float:
        """Decoder noise variance γ, in normalised input units."""
        return float(self.log_gamma.detach().exp())


@register
class VAE(VAEase):
    """The plain VAE baseline: identical to VAEase except the decoder gets z, not (1 − σ) ⊙ z."""

    config_class = VAEConfig
    gated = False
