"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"), mainly so that SAELens "gated" folders import exactly (and export back).

One encoder matrix W (κ × d) serves two paths on the centred input x' = x − b_d:

    gate      = H(W x' + b_gate)                          which latents fire
    magnitude = relu((exp(r_mag) ⊙ W) x' + b_mag)          how strongly (rows of W rescaled)
    f         = gate ⊙ magnitude,     x̂ = W_d f + b_d

SAELens computes the same (its W_enc = Wᵀ and no b_enc). Training uses the paper's loss:

    recon     = ‖x − x̂‖²
    sparsity  = λ Σ_j relu(W x' + b_gate)_j · ‖d_j‖        (λ = `l1_coefficient`; ‖d_j‖ = 1 here)
    auxiliary = ‖x − (W_d relu(W x' + b_gate) + b_d)‖² with W_d and b_d frozen (detached),
                so that the gate path learns to reconstruct and gets a gradient at all.

Decoder columns are kept at unit norm, the encoder starts as the decoder's transpose with zero
biases and r_mag = 0, scaled by one number so that the first reconstructions have the data's size
(as for JumpReLU), and b_dec starts at the data mean, as for the other modern recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dictionaries.auxk import scale_encoder_to_data
from dictionaries.base import Dictionary, DictionaryConfig, LossTerms, SAELensExport, squared_error
from dictionaries.registry import register
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class GatedConfig(DictionaryConfig):
    architecture = "gated"
    l1_coefficient: float = 1.0
    """λ of the L1 penalty on the gate path's ReLU (inputs scaled to E‖x‖² ≈ d, as for JumpReLU)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l1_coefficient >= 0:
            raise ConfigError(f"{self.architecture}: l1_coefficient must be ≥ 0, got {self.l1_coefficient}")


@register
class Gated(Dictionary):
    config_class = GatedConfig
    config: GatedConfig

    def __init__(self, config: GatedConfig) -> None:
        super().__init__(config)
        self.encoder = nn.Linear(config.d, config.n_latents, bias=False)
        self.b_gate = nn.Parameter(torch.zeros(config.n_latents))
        self.b_mag = nn.Parameter(torch.zeros(config.n_latents))
        self.r_mag = nn.Parameter(torch.zeros(config.n_latents))
        with torch.no_grad():
            self.decoder.bias.zero_()
            self._normalise_decoder()
            self.encoder.weight.copy_(self.decoder.weight.T)

    @torch.no_grad()
    def _normalise_decoder(self) -> None:
        self.decoder.weight /= self.decoder.weight.norm(dim=0, keepdim=True).clamp(min=1e-12)

    def prepare(self, sample: torch.Tensor) -> None:
        """b_dec := mean of the (normalised) training sample, then the encoder scaled so that the
        first reconstructions have about the data's size (`dictionaries.auxk.scale_encoder_to_data`)."""
        with torch.no_grad():
            xn = sample.to(self.decoder.bias.device, torch.float32) * self.input_scale
            self.decoder.bias.copy_(xn.mean(dim=0))
        scale_encoder_to_data(self, self.encoder, xn)

    def after_optimizer_step(self) -> None:
        self._normalise_decoder()

    def _paths(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gate pre-activation, magnitude pre-activation), each [B, κ]."""
        centred = xn - self.decoder.bias
        gate_pre = self.encoder(centred) + self.b_gate
        magnitude_pre = nn.functional.linear(centred, self.encoder.weight * self.r_mag.exp()[:, None], self.b_mag)
        return gate_pre, magnitude_pre

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        gate_pre, magnitude_pre = self._paths(xn)
        return (gate_pre > 0) * torch.relu(magnitude_pre)

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        gate_pre, magnitude_pre = self._paths(xn)
        f = (gate_pre > 0) * torch.relu(magnitude_pre)
        gate_relu = torch.relu(gate_pre)
        frozen = nn.functional.linear(gate_relu, self.decoder.weight.detach(), self.decoder.bias.detach())
        norms = self.decoder.weight.norm(dim=0)
        return {
            "recon": squared_error(xn, self.decoder(f)).mean(),
            "sparsity": self.config.l1_coefficient * (gate_relu.float() * norms).sum(dim=-1).mean(),
            "auxiliary": squared_error(xn, frozen).mean(),
        }

    def saelens_export(self) -> SAELensExport:
        """SAELens "gated" with apply_b_dec_to_input, the input scale s folded in: W_enc = s·Wᵀ,
        W_dec = W_dᵀ/s, b_dec = b_d/s; b_gate, b_mag and r_mag act on pre-activations, which are unchanged."""
        s = self.input_scale
        tensors = {
            "W_enc": (self.encoder.weight * s).T,
            "b_gate": self.b_gate,
            "b_mag": self.b_mag,
            "r_mag": self.r_mag,
            "W_dec": (self.decoder.weight / s).T,
            "b_dec": self.decoder.bias / s,
        }
        return SAELensExport("gated", True, {name: t.detach().cpu().contiguous() for name, t in tensors.items()})
