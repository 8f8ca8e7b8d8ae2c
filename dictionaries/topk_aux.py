"""The modern TopK SAE recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"),
kept apart from the paper-faithful `sae_topk`:

- the decoder bias is subtracted before encoding and initialised to the data mean;
- decoder columns have unit norm (re-imposed after every optimiser step), encoder initialised
  to the decoder's transpose;
- an auxiliary loss lets dead latents (no activation for `dead_after_tokens` tokens) reconstruct
  the residual x − x̂ with their top `aux_k` activations, so they get gradient again.

Loss terms: `recon` ‖x − x̂‖² and `aux` (aux_coefficient ‖e − ê‖², e = x − x̂ detached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dictionaries.base import Dictionary, DictionaryConfig, LossTerms, SAELensExport, fold_linear_sae, squared_error
from dictionaries.registry import register
from dictionaries.sae import topk_activations
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class TopKAuxConfig(DictionaryConfig):
    architecture = "topk_aux"
    k: int = 32
    aux_k: int = 512
    """Dead latents used by the auxiliary reconstruction (clipped to n_latents)."""
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 10_000_000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")


@register
class TopKAux(Dictionary):
    config_class = TopKAuxConfig

    def __init__(self, config: TopKAuxConfig) -> None:
        super().__init__(config)
        self.encoder = nn.Linear(config.d, config.n_latents)
        with torch.no_grad():
            self.decoder.bias.zero_()
            self._normalise_decoder()
            self.encoder.weight.copy_(self.decoder.weight.T)
        # Tokens seen since each latent last fired (training only); saved, so resume is exact.
        self.register_buffer("tokens_since_fired", torch.zeros(config.n_latents, dtype=torch.long))

    @torch.no_grad()
    def _normalise_decoder(self) -> None:
        self.decoder.weight /= self.decoder.weight.norm(dim=0, keepdim=True).clamp(min=1e-12)

    def prepare(self, sample: torch.Tensor) -> None:
        """b_dec := mean of the (normalised) sample."""
        with torch.no_grad():
            xn = sample.to(self.decoder.bias.device, torch.float32) * self.input_scale
            self.decoder.bias.copy_(xn.mean(dim=0))

    def after_optimizer_step(self) -> None:
        self._normalise_decoder()

    def _pre_activations(self, xn: torch.Tensor) -> torch.Tensor:
        return self.encoder(xn - self.decoder.bias)

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        return topk_activations(self._pre_activations(xn), self.config.k)

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        cfg = self.config
        pre = self._pre_activations(xn)
        f = topk_activations(pre, cfg.k)
        x_hat = self.decoder(f)
        # Auxiliary loss over the currently dead latents (masked, so no host sync is needed).
        dead = self.tokens_since_fired >= cfg.dead_after_tokens
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        aux_f = topk_activations(dead_pre, min(cfg.aux_k, cfg.n_latents))
        residual = (xn.float() - x_hat.float()).detach()
        aux_hat = aux_f @ self.decoder.weight.T
        if self.training:
            with torch.no_grad():
                fired = (f > 0).any(dim=0)
                self.tokens_since_fired.add_(xn.shape[0]).masked_fill_(fired, 0)
        return {
            "recon": squared_error(xn, x_hat).mean(),
            "aux": cfg.aux_coefficient * squared_error(residual, aux_hat).mean(),
        }

    def saelens_export(self) -> SAELensExport:
        """SAELens "topk" with apply_b_dec_to_input: it encodes x − b_dec, as this recipe does."""
        tensors = fold_linear_sae(self.encoder, self.decoder, self.input_scale)
        return SAELensExport("topk", True, tensors, {"k": self.config.k, "rescale_acts_by_decoder_norm": False})
