"""BatchTopK SAE (Bussmann, Leask and Nanda 2024, "BatchTopK Sparse Autoencoders").

Training keeps the k·B largest ReLU pre-activations of the whole batch of B vectors (so k per
vector on average, adaptively more for some and fewer for others), and zeroes the rest. Inference
must not depend on the batch, so it uses one global threshold θ instead:

    f = relu(pre) · (pre > θ),    pre = W_e (x − b_d) + b_e

θ is estimated during training, as in dictionary_learning and SAELens: after every training batch,
m = the smallest positive activation the batch top-k kept, and θ ← β·θ + (1 − β)·m (the first
batch sets θ = m; a batch with no positive activation leaves θ alone). θ is a buffer, so saving,
loading and resuming keep it. Until the first training batch θ = −1, a sentinel under which
inference is plain ReLU.

The rest is the modern recipe (see `dictionaries.auxk.AuxKSAE`): b_dec from the data mean,
unit-norm decoder columns, encoder = decoderᵀ, AuxK on dead latents. Loss terms: `recon`
‖x − x̂‖² (batch mean) and `aux` (aux_coefficient × Gao et al.'s normalised AuxK loss).
SAELens saves BatchTopK for inference as "jumprelu" with threshold θ for every latent; so does this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dictionaries.auxk import AuxKConfig, AuxKSAE, jumprelu
from dictionaries.base import LossTerms, SAELensExport, squared_error
from dictionaries.registry import register
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class BatchTopKConfig(AuxKConfig):
    architecture = "batchtopk"
    k: int = 32
    """Mean active latents per vector during training (the batch keeps k·B)."""
    threshold_beta: float = 0.99
    """β of the exponential moving average of the inference threshold: 0.99 is SAELens's
    topk_threshold_lr = 1 − β = 0.01 (dictionary_learning uses 0.999, from step 1000 on, which
    lags on short runs: after 600 steps its inference L0 was half of k in a test here)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"{self.architecture}: k must be in [1, n_latents={self.n_latents}], got {self.k}")
        if not 0 <= self.threshold_beta < 1:
            raise ConfigError(f"{self.architecture}: threshold_beta must be in [0, 1), got {self.threshold_beta}")


def batch_topk(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(code [B, κ], kept values [k·B]): the k·B largest ReLU pre-activations of the whole batch
    kept in place, the rest zero. Kept values may include zeros when fewer are positive."""
    acts = torch.relu(pre).flatten()
    values, indices = acts.topk(min(k * pre.shape[0], acts.numel()), sorted=False)
    return torch.zeros_like(acts).scatter(0, indices, values).view_as(pre), values


@register
class BatchTopK(AuxKSAE):
    config_class = BatchTopKConfig
    config: BatchTopKConfig
    threshold: torch.Tensor
    """The inference threshold θ (a scalar buffer; −1 until the first training batch)."""

    def __init__(self, config: BatchTopKConfig) -> None:
        super().__init__(config)
        self.register_buffer("threshold", torch.tensor(-1.0))

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        return jumprelu(self._pre_activations(xn), self.threshold)

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        """θ ← β·θ + (1 − β)·(smallest positive kept value); see the module docstring."""
        kept = kept.detach().float()
        positive = kept > 0
        smallest = torch.where(positive, kept, torch.inf).min()
        beta = self.config.threshold_beta
        moved = torch.where(self.threshold < 0, smallest, beta * self.threshold + (1 - beta) * smallest)
        self.threshold.copy_(torch.where(positive.any(), moved, self.threshold))

    def _code(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre-activations, training code) of a batch; updates θ in training mode."""
        pre = self._pre_activations(xn)
        f, kept = batch_topk(pre, self.config.k)
        if self.training:
            self._update_threshold(kept)
        return pre, f

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        pre, f = self._code(xn)
        x_hat = self.decoder(f)
        return {"recon": squared_error(xn, x_hat).mean(), "aux": self._aux_loss(pre, xn, x_hat, f)}

    def saelens_export(self) -> SAELensExport:
        """SAELens "jumprelu" (as SAELens saves BatchTopK): θ for every latent (θ < 0, never trained,
        is written as 0, which computes the same)."""
        return self._jumprelu_export(self.threshold.clamp(min=0))
