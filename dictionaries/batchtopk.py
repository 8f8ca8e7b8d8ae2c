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

Training runs through the sparse TopK path (`dictionaries.sparse_topk.batch_topk`: the batch's top
k·B as a ragged code, exactly k·B entries, decoded from the active latents only).

The rest is the modern recipe (see `dictionaries.auxk.AuxKSAE`): b_dec from the data mean,
unit-norm decoder columns, encoder = decoderᵀ, AuxK on dead latents. Loss terms: `recon`
‖x − x̂‖² (batch mean) and `aux` (aux_coefficient × Gao et al.'s normalised AuxK loss).
SAELens saves BatchTopK for inference as "jumprelu" with threshold θ for every latent; so does this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dictionaries.auxk import AuxKConfig, AuxKSAE, jumprelu
from dictionaries.base import LossTerms, SAELensExport
from dictionaries.registry import register
from dictionaries.sparse_topk import Selection, SparseCode
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class BatchTopKConfig(AuxKConfig):
    architecture = "batchtopk"
    k: int = 32
    """Mean active latents per vector during training (the batch keeps k·B)."""
    threshold_beta: float = 0.9
    """β of the exponential moving average of the inference threshold. The per-batch value (the
    k·B-th largest activation) barely varies between batches, so the average mostly has to follow
    the drift of the weights, and a slow one lags: with SAELens's 0.99 (topk_threshold_lr 0.01),
    after 180 steps of 4,096 vectors (SmolLM2 layer 15, κ 2048, k 64) θ was 0.557 where the last
    batch's value was 0.429, and inference L0 48.5 instead of 64 (FVU 0.227, 10.4% of latents
    never active on held-out vectors); the last batch's θ gave L0 63.9, FVU 0.209, 4.8% dead.
    dictionary_learning's 0.999 (from step 1000 on) lags more."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"{self.architecture}: k must be in [1, n_latents={self.n_latents}], got {self.k}")
        if not 0 <= self.threshold_beta < 1:
            raise ConfigError(f"{self.architecture}: threshold_beta must be in [0, 1), got {self.threshold_beta}")


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
        """θ ← β·θ + (1 − β)·(smallest positive kept value); see the module docstring. `kept`: the
        batch's kept activations, in any shape (zeros, kept where pre ≤ 0, are ignored)."""
        kept = kept.detach().float()
        positive = kept > 0
        smallest = torch.where(positive, kept, torch.inf).min()
        beta = self.config.threshold_beta
        moved = torch.where(self.threshold < 0, smallest, beta * self.threshold + (1 - beta) * smallest)
        self.threshold.copy_(torch.where(positive.any(), moved, self.threshold))

    def _training_code(self, xn: torch.Tensor) -> tuple[SparseCode, torch.Tensor]:
        """The batch top-k code of a batch through the sparse path (ragged), and the dead set;
        updates θ in training mode."""
        code, dead = self._sparse_training_code(xn, Selection("batch_topk", self.config.k))
        if self.training:
            self._update_threshold(code.values)
        return code, dead

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        code, dead = self._training_code(xn)
        recon, aux = self._sparse_recon_and_aux(xn, code, dead)
        return {"recon": recon, "aux": aux}

    def saelens_export(self) -> SAELensExport:
        """SAELens "jumprelu" (as SAELens saves BatchTopK): θ for every latent (θ < 0, never trained,
        is written as 0, which computes the same)."""
        return self._jumprelu_export(self.threshold.clamp(min=0))
